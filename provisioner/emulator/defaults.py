"""The emulator's defaults, apart from the server so that the command line can show them in its help
without importing the engine and the crypto stack on every `provision` run."""

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 0
#: The one credential a server accepts unless told otherwise. Public on purpose: it guards nothing.
DEFAULT_ACCESS_KEY_ID = "LTAI5tKmsEmulatorLocal"
DEFAULT_ACCESS_KEY_SECRET = "kms-emulator-local-secret"
