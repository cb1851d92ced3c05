"""alknet.secret: BIP39 words, SLIP-0010 keys, site passwords, AES-256-GCM blobs and the secret service.

Imports only the standard library, ``mnemonic``, ``slip10`` and ``cryptography`` (never asyncssh, aioquic or
iroh). See ``docs/secrets.md`` for what is derived where and how a node is restored from its words.
"""

from importlib.metadata import version as _version

from alknet.secret.crypto import (
    CURRENT_KEY_VERSION,
    EncryptedData,
    decrypt_with_key,
    encrypt_with_key,
    key_check_value,
)
from alknet.secret.derive import (
    DerivedKey,
    KeyType,
    derive_aes_key_from_seed,
    derive_ed25519_from_seed,
    derive_secp256k1_from_seed,
)
from alknet.secret.errors import (
    AlreadyUnlockedError,
    DecryptionError,
    IdentityMismatchError,
    InvalidMnemonicError,
    InvalidPathError,
    LockedError,
    SecretError,
)
from alknet.secret.keygen import (
    KeygenResult,
    KeyRole,
    default_key_filename,
    derive_role_key,
    keygen_from_mnemonic,
    role_comment,
    role_path,
)
from alknet.secret.mnemonic import generate_mnemonic, mnemonic_to_seed, normalize_mnemonic, validate_mnemonic
from alknet.secret.openssh import (
    ed25519_private_openssh,
    ed25519_public_openssh,
    endpoint_id,
    openssh_fingerprint,
    write_keypair,
)
from alknet.secret.ops import register_secret_operations, secret_operation_specs
from alknet.secret.password import password_from_key
from alknet.secret.paths import (
    ETHEREUM_PATH,
    IDENTITY_PATH,
    SSH_HOST_PATH,
    device_path,
    encryption_path,
    format_path,
    parse_path,
    site_password_index,
    site_password_path,
)
from alknet.secret.service import SecretService

__version__ = _version("alknet-secret")

__all__ = [
    "CURRENT_KEY_VERSION",
    "ETHEREUM_PATH",
    "IDENTITY_PATH",
    "SSH_HOST_PATH",
    "AlreadyUnlockedError",
    "DecryptionError",
    "DerivedKey",
    "EncryptedData",
    "IdentityMismatchError",
    "InvalidMnemonicError",
    "InvalidPathError",
    "KeyRole",
    "KeyType",
    "KeygenResult",
    "LockedError",
    "SecretError",
    "SecretService",
    "__version__",
    "decrypt_with_key",
    "default_key_filename",
    "derive_aes_key_from_seed",
    "derive_ed25519_from_seed",
    "derive_role_key",
    "derive_secp256k1_from_seed",
    "device_path",
    "ed25519_private_openssh",
    "ed25519_public_openssh",
    "encrypt_with_key",
    "encryption_path",
    "endpoint_id",
    "format_path",
    "generate_mnemonic",
    "key_check_value",
    "keygen_from_mnemonic",
    "mnemonic_to_seed",
    "normalize_mnemonic",
    "openssh_fingerprint",
    "parse_path",
    "password_from_key",
    "register_secret_operations",
    "role_comment",
    "role_path",
    "secret_operation_specs",
    "site_password_index",
    "site_password_path",
    "validate_mnemonic",
    "write_keypair",
]
