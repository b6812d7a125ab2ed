"""byok-provisioner: declarative Alibaba Cloud KMS keys with imported asymmetric material."""

__version__ = "0.1.0"
