"""keymigration: re-wrap Amazon S3 client-side-encryption data keys under AWS KMS."""

__version__ = "0.1.0"
