"""A KMS that behaves like Alibaba Cloud's for everything BYOK touches (engine, RPC layer, server)."""
