"""Known-answer vectors (secret.md §11): official BIP39 and SLIP-0010 ed25519 vectors, alknet's own values.

Every value is compared as hex, byte for byte. The BIP39 table is the official Trezor set (python-mnemonic
``vectors.json``, passphrase ``"TREZOR"``); the SLIP-0010 tables are ed25519 test vectors 1 and 2 of the
SLIP-0010 standard (parent fingerprint, chain code, private key, public key with its ``00`` prefix).
"""

from __future__ import annotations

import pytest
from mnemonic import Mnemonic
from slip10 import SLIP10

from alknet.secret import (
    ETHEREUM_PATH,
    IDENTITY_PATH,
    SSH_HOST_PATH,
    decrypt_with_key,
    derive_aes_key_from_seed,
    derive_ed25519_from_seed,
    derive_secp256k1_from_seed,
    ed25519_public_openssh,
    encryption_path,
    endpoint_id,
    mnemonic_to_seed,
    openssh_fingerprint,
    password_from_key,
    site_password_index,
    site_password_path,
    validate_mnemonic,
)

from .known import (
    ABANDON,
    AES_V2,
    ETH_PRIVATE,
    ETH_PUBLIC,
    HOST_FINGERPRINT,
    HOST_LINE,
    HOST_PUBLIC,
    IDENTITY_FINGERPRINT,
    IDENTITY_LINE,
    IDENTITY_PRIVATE,
    IDENTITY_PUBLIC,
    KNOWN_BLOB,
    PATH0_PASSWORD_20,
    SEED_EMPTY,
    SEED_TREZOR,
    SITE_PASSWORD_16,
    SITE_PASSWORD_32,
)

# (entropy, mnemonic, seed with passphrase "TREZOR")
BIP39_TREZOR_VECTORS = [
    (
        "00000000000000000000000000000000",
        "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about",
        "c55257c360c07c72029aebc1b53c05ed0362ada38ead3e3e9efa3708e53495531f09a6987599d18264c1e1c92f2cf141630c7a3c4ab7c81b2f001698e7463b04",
    ),
    (
        "7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f",
        "legal winner thank year wave sausage worth useful legal winner thank yellow",
        "2e8905819b8723fe2c1d161860e5ee1830318dbf49a83bd451cfb8440c28bd6fa457fe1296106559a3c80937a1c1069be3a3a5bd381ee6260e8d9739fce1f607",
    ),
    (
        "80808080808080808080808080808080",
        "letter advice cage absurd amount doctor acoustic avoid letter advice cage above",
        "d71de856f81a8acc65e6fc851a38d4d7ec216fd0796d0a6827a3ad6ed5511a30fa280f12eb2e47ed2ac03b5c462a0358d18d69fe4f985ec81778c1b370b652a8",
    ),
    (
        "ffffffffffffffffffffffffffffffff",
        "zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo wrong",
        "ac27495480225222079d7be181583751e86f571027b0497b5b5d11218e0a8a13332572917f0f8e5a589620c6f15b11c61dee327651a14c34e18231052e48c069",
    ),
    (
        "000000000000000000000000000000000000000000000000",
        "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon "
        "abandon abandon abandon abandon abandon agent",
        "035895f2f481b1b0f01fcf8c289c794660b289981a78f8106447707fdd9666ca06da5a9a565181599b79f53b844d8a71dd9f439c52a3d7b3e8a79c906ac845fa",
    ),
    (
        "7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f",
        "legal winner thank year wave sausage worth useful legal winner thank year wave sausage worth useful "
        "legal will",
        "f2b94508732bcbacbcc020faefecfc89feafa6649a5491b8c952cede496c214a0c7b3c392d168748f2d4a612bada0753b52a1c7ac53c1e93abd5c6320b9e95dd",
    ),
    (
        "808080808080808080808080808080808080808080808080",
        "letter advice cage absurd amount doctor acoustic avoid letter advice cage absurd amount doctor "
        "acoustic avoid letter always",
        "107d7c02a5aa6f38c58083ff74f04c607c2d2c0ecc55501dadd72d025b751bc27fe913ffb796f841c49b1d33b610cf0e91d3aa239027f5e99fe4ce9e5088cd65",
    ),
    (
        "ffffffffffffffffffffffffffffffffffffffffffffffff",
        "zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo when",
        "0cd6e5d827bb62eb8fc1e262254223817fd068a74b5b449cc2f667c3f1f985a76379b43348d952e2265b4cd129090758b3e3c2c49103b5051aac2eaeb890a528",
    ),
    (
        "0000000000000000000000000000000000000000000000000000000000000000",
        "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon "
        "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon art",
        "bda85446c68413707090a52022edd26a1c9462295029f2e60cd7c4f2bbd3097170af7a4d73245cafa9c3cca8d561a7c3de6f5d4a10be8ed2a5e608d68f92fcc8",
    ),
    (
        "7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f",
        "legal winner thank year wave sausage worth useful legal winner thank year wave sausage worth useful "
        "legal winner thank year wave sausage worth title",
        "bc09fca1804f7e69da93c2f2028eb238c227f2e9dda30cd63699232578480a4021b146ad717fbb7e451ce9eb835f43620bf5c514db0f8add49f5d121449d3e87",
    ),
    (
        "8080808080808080808080808080808080808080808080808080808080808080",
        "letter advice cage absurd amount doctor acoustic avoid letter advice cage absurd amount doctor "
        "acoustic avoid letter advice cage absurd amount doctor acoustic bless",
        "c0c519bd0e91a2ed54357d9d1ebef6f5af218a153624cf4f2da911a0ed8f7a09e2ef61af0aca007096df430022f7a2b6fb91661a9589097069720d015e4e982f",
    ),
    (
        "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo vote",
        "dd48c104698c30cfe2b6142103248622fb7bb0ff692eebb00089b32d22484e1613912f0a5b694407be899ffd31ed3992c456cdf60f5d4564b8ba3f05a69890ad",
    ),
    (
        "9e885d952ad362caeb4efe34a8e91bd2",
        "ozone drill grab fiber curtain grace pudding thank cruise elder eight picnic",
        "274ddc525802f7c828d8ef7ddbcdc5304e87ac3535913611fbbfa986d0c9e5476c91689f9c8a54fd55bd38606aa6a8595ad213d4c9c9f9aca3fb217069a41028",
    ),
    (
        "6610b25967cdcca9d59875f5cb50b0ea75433311869e930b",
        "gravity machine north sort system female filter attitude volume fold club stay feature office "
        "ecology stable narrow fog",
        "628c3827a8823298ee685db84f55caa34b5cc195a778e52d45f59bcf75aba68e4d7590e101dc414bc1bbd5737666fbbef35d1f1903953b66624f910feef245ac",
    ),
    (
        "68a79eaca2324873eacc50cb9c6eca8cc68ea5d936f98787c60c7ebc74e6ce7c",
        "hamster diagram private dutch cause delay private meat slide toddler razor book happy fancy gospel "
        "tennis maple dilemma loan word shrug inflict delay length",
        "64c87cde7e12ecf6704ab95bb1408bef047c22db4cc7491c4271d170a1b213d20b385bc1588d9c7b38f1b39d415665b8a9030c9ec653d75e65f847d8fc1fc440",
    ),
    (
        "c0ba5a8e914111210f2bd131f3d5e08d",
        "scheme spot photo card baby mountain device kick cradle pact join borrow",
        "ea725895aaae8d4c1cf682c1bfd2d358d52ed9f0f0591131b559e2724bb234fca05aa9c02c57407e04ee9dc3b454aa63fbff483a8b11de949624b9f1831a9612",
    ),
    (
        "6d9be1ee6ebd27a258115aad99b7317b9c8d28b6d76431c3",
        "horn tenant knee talent sponsor spell gate clip pulse soap slush warm silver nephew swap uncle "
        "crack brave",
        "fd579828af3da1d32544ce4db5c73d53fc8acc4ddb1e3b251a31179cdb71e853c56d2fcb11aed39898ce6c34b10b5382772db8796e52837b54468aeb312cfc3d",
    ),
    (
        "9f6a2878b2520799a44ef18bc7df394e7061a224d2c33cd015b157d746869863",
        "panda eyebrow bullet gorilla call smoke muffin taste mesh discover soft ostrich alcohol speed "
        "nation flash devote level hobby quick inner drive ghost inside",
        "72be8e052fc4919d2adf28d5306b5474b0069df35b02303de8c1729c9538dbb6fc2d731d5f832193cd9fb6aeecbc469594a70e3dd50811b5067f3b88b28c3e8d",
    ),
    (
        "23db8160a31d3e0dca3688ed941adbf3",
        "cat swing flag economy stadium alone churn speed unique patch report train",
        "deb5f45449e615feff5640f2e49f933ff51895de3b4381832b3139941c57b59205a42480c52175b6efcffaa58a2503887c1e8b363a707256bdd2b587b46541f5",
    ),
    (
        "8197a4a47f0425faeaa69deebc05ca29c0a5b5cc76ceacc0",
        "light rule cinnamon wrap drastic word pride squirrel upgrade then income fatal apart sustain crack "
        "supply proud access",
        "4cbdff1ca2db800fd61cae72a57475fdc6bab03e441fd63f96dabd1f183ef5b782925f00105f318309a7e9c3ea6967c7801e46c8a58082674c860a37b93eda02",
    ),
    (
        "066dca1a2bb7e8a1db2832148ce9933eea0f3ac9548d793112d9a95c9407efad",
        "all hour make first leader extend hole alien behind guard gospel lava path output census museum "
        "junior mass reopen famous sing advance salt reform",
        "26e975ec644423f4a4c4f4215ef09b4bd7ef924e85d1d17c4cf3f136c2863cf6df0a475045652c57eb5fb41513ca2a2d67722b77e954b4b3fc11f7590449191d",
    ),
    (
        "f30f8c1da665478f49b001d94c5fc452",
        "vessel ladder alter error federal sibling chat ability sun glass valve picture",
        "2aaa9242daafcee6aa9d7269f17d4efe271e1b9a529178d7dc139cd18747090bf9d60295d0ce74309a78852a9caadf0af48aae1c6253839624076224374bc63f",
    ),
    (
        "c10ec20dc3cd9f652c7fac2f1230f7a3c828389a14392f05",
        "scissors invite lock maple supreme raw rapid void congress muscle digital elegant little brisk hair "
        "mango congress clump",
        "7b4a10be9d98e6cba265566db7f136718e1398c71cb581e1b2f464cac1ceedf4f3e274dc270003c670ad8d02c4558b2f8e39edea2775c9e232c7cb798b069e88",
    ),
    (
        "f585c11aec520db57dd353c69554b21a89b20fb0650966fa0a9d6f74fd989d8f",
        "void come effort suffer camp survey warrior heavy shoot primary clutch crush open amazing screen "
        "patrol group space point ten exist slush involve unfold",
        "01f5bced59dec48e362f2c45b5de68b9fd6c92c6634f44d6d40aab69056506f0e35524a518034ddc1192e1dacd32c1ed3eaa3c3b131c88ed8e7e54c49a5d0998",
    ),
]

SLIP10_SEED_1 = "000102030405060708090a0b0c0d0e0f"
SLIP10_SEED_2 = (
    "fffcf9f6f3f0edeae7e4e1dedbd8d5d2cfccc9c6c3c0bdbab7b4b1aeaba8a5a2"
    "9f9c999693908d8a8784817e7b7875726f6c696663605d5a5754514e4b484542"
)

# (path, parent fingerprint, chain code, private key, public key) - SLIP-0010 ed25519 vectors 1 and 2
SLIP10_ED25519_VECTOR_1 = [
    (
        "m",
        "00000000",
        "90046a93de5380a72b5e45010748567d5ea02bbf6522f979e05c0d8d8ca9fffb",
        "2b4be7f19ee27bbf30c667b642d5f4aa69fd169872f8fc3059c08ebae2eb19e7",
        "00a4b2856bfec510abab89753fac1ac0e1112364e7d250545963f135f2a33188ed",
    ),
    (
        "m/0'",
        "ddebc675",
        "8b59aa11380b624e81507a27fedda59fea6d0b779a778918a2fd3590e16e9c69",
        "68e0fe46dfb67e368c75379acec591dad19df3cde26e63b93a8e704f1dade7a3",
        "008c8a13df77a28f3445213a0f432fde644acaa215fc72dcdf300d5efaa85d350c",
    ),
    (
        "m/0'/1'",
        "13dab143",
        "a320425f77d1b5c2505a6b1b27382b37368ee640e3557c315416801243552f14",
        "b1d0bad404bf35da785a64ca1ac54b2617211d2777696fbffaf208f746ae84f2",
        "001932a5270f335bed617d5b935c80aedb1a35bd9fc1e31acafd5372c30f5c1187",
    ),
    (
        "m/0'/1'/2'",
        "ebe4cb29",
        "2e69929e00b5ab250f49c3fb1c12f252de4fed2c1db88387094a0f8c4c9ccd6c",
        "92a5b23c0b8a99e37d07df3fb9966917f5d06e02ddbd909c7e184371463e9fc9",
        "00ae98736566d30ed0e9d2f4486a64bc95740d89c7db33f52121f8ea8f76ff0fc1",
    ),
    (
        "m/0'/1'/2'/2'",
        "316ec1c6",
        "8f6d87f93d750e0efccda017d662a1b31a266e4a6f5993b15f5c1f07f74dd5cc",
        "30d1dc7e5fc04c31219ab25a27ae00b50f6fd66622f6e9c913253d6511d1e662",
        "008abae2d66361c879b900d204ad2cc4984fa2aa344dd7ddc46007329ac76c429c",
    ),
    (
        "m/0'/1'/2'/2'/1000000000'",
        "d6322ccd",
        "68789923a0cac2cd5a29172a475fe9e0fb14cd6adb5ad98a3fa70333e7afa230",
        "8f94d394a8e8fd6b1bc2f3f49f5c47e385281d5c17e65324b0f62483e37e8793",
        "003c24da049451555d51a7014a37337aa4e12d41e485abccfa46b47dfb2af54b7a",
    ),
]

SLIP10_ED25519_VECTOR_2 = [
    (
        "m",
        "00000000",
        "ef70a74db9c3a5af931b5fe73ed8e1a53464133654fd55e7a66f8570b8e33c3b",
        "171cb88b1b3c1db25add599712e36245d75bc65a1a5c9e18d76f9f2b1eab4012",
        "008fe9693f8fa62a4305a140b9764c5ee01e455963744fe18204b4fb948249308a",
    ),
    (
        "m/0'",
        "31981b50",
        "0b78a3226f915c082bf118f83618a618ab6dec793752624cbeb622acb562862d",
        "1559eb2bbec5790b0c65d8693e4d0875b1747f4970ae8b650486ed7470845635",
        "0086fab68dcb57aa196c77c5f264f215a112c22a912c10d123b0d03c3c28ef1037",
    ),
    (
        "m/0'/2147483647'",
        "1e9411b1",
        "138f0b2551bcafeca6ff2aa88ba8ed0ed8de070841f0c4ef0165df8181eaad7f",
        "ea4f5bfe8694d8bb74b7b59404632fd5968b774ed545e810de9c32a4fb4192f4",
        "005ba3b9ac6e90e83effcd25ac4e58a1365a9e35a3d3ae5eb07b9e4d90bcf7506d",
    ),
    (
        "m/0'/2147483647'/1'",
        "fcadf38c",
        "73bd9fff1cfbde33a1b846c27085f711c0fe2d66fd32e139d3ebc28e5a4a6b90",
        "3757c7577170179c7868353ada796c839135b3d30554bbb74a4b1e4a5a58505c",
        "002e66aa57069c86cc18249aecf5cb5a9cebbfd6fadeab056254763874a9352b45",
    ),
    (
        "m/0'/2147483647'/1'/2147483646'",
        "aca70953",
        "0902fe8a29f9140480a00ef244bd183e8a13288e4412d8389d140aac1794825a",
        "5837736c89570de861ebc173b1086da4f505d4adb387c6a1b1342d5e4ac9ec72",
        "00e33c0f7d81d843c572275f287498e8d408654fdf0d1e065b84e2e6f157aab09b",
    ),
    (
        "m/0'/2147483647'/1'/2147483646'/2'",
        "422c654b",
        "5d70af781f3a37b829f0d060924d5e960bdc02e85423494afc0b1a41bbe196d4",
        "551d333177df541ad876a60ea71f00447931c0a9da16f227c11ea080d7391b8d",
        "0047150c75db263559a70d5778bf36abbab30fb061ad69f69ece61a72b0cfa4fc0",
    ),
]


@pytest.fixture(scope="module")
def abandon_seed() -> bytearray:
    return mnemonic_to_seed(ABANDON)


# -- BIP39 ---------------------------------------------------------------------------------------------------


def test_bip39_abandon_seeds() -> None:
    assert mnemonic_to_seed(ABANDON).hex() == SEED_EMPTY
    assert mnemonic_to_seed(ABANDON, "TREZOR").hex() == SEED_TREZOR


@pytest.mark.parametrize(("entropy", "phrase", "seed"), BIP39_TREZOR_VECTORS)
def test_bip39_official_trezor_vectors(entropy: str, phrase: str, seed: str) -> None:
    assert validate_mnemonic(phrase) == phrase
    assert Mnemonic("english").to_mnemonic(bytes.fromhex(entropy)) == phrase
    assert mnemonic_to_seed(phrase, "TREZOR").hex() == seed


# -- SLIP-0010 -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seed_hex", "rows"),
    [(SLIP10_SEED_1, SLIP10_ED25519_VECTOR_1), (SLIP10_SEED_2, SLIP10_ED25519_VECTOR_2)],
    ids=["vector1", "vector2"],
)
def test_slip10_ed25519_official_vectors(seed_hex: str, rows: list[tuple[str, str, str, str, str]]) -> None:
    seed = bytes.fromhex(seed_hex)
    root = SLIP10.from_seed(seed, curve_name="ed25519")
    for path, parent_fp, chain, private, public in rows:
        key = derive_ed25519_from_seed(seed, path)
        assert key.private_key.hex() == private, path
        assert "00" + key.public_key.hex() == public, path
        node = root.get_child_from_path(path)
        assert node.chaincode.hex() == chain, path
        assert node.privkey.hex() == private, path
        assert node.pubkey.hex() == public, path
        assert node.parent_fingerprint.hex() == parent_fp, path


def test_slip10_vector1_spec_rows() -> None:
    seed = bytes.fromhex(SLIP10_SEED_1)
    root = SLIP10.from_seed(seed, curve_name="ed25519")
    assert root.privkey.hex() == "2b4be7f19ee27bbf30c667b642d5f4aa69fd169872f8fc3059c08ebae2eb19e7"
    assert root.chaincode.hex() == "90046a93de5380a72b5e45010748567d5ea02bbf6522f979e05c0d8d8ca9fffb"
    assert root.pubkey.hex() == "00a4b2856bfec510abab89753fac1ac0e1112364e7d250545963f135f2a33188ed"
    child = root.get_child_from_path("m/0'")
    assert child.privkey.hex() == "68e0fe46dfb67e368c75379acec591dad19df3cde26e63b93a8e704f1dade7a3"
    assert child.chaincode.hex() == "8b59aa11380b624e81507a27fedda59fea6d0b779a778918a2fd3590e16e9c69"
    assert child.pubkey.hex() == "008c8a13df77a28f3445213a0f432fde644acaa215fc72dcdf300d5efaa85d350c"


# -- alknet's own values -------------------------------------------------------------------------------------


def test_identity_key(abandon_seed: bytearray) -> None:
    key = derive_ed25519_from_seed(abandon_seed, IDENTITY_PATH)
    assert key.private_key.hex() == IDENTITY_PRIVATE
    assert key.public_key.hex() == IDENTITY_PUBLIC
    assert openssh_fingerprint(key.public_key) == IDENTITY_FINGERPRINT
    assert endpoint_id(key.public_key) == IDENTITY_PUBLIC
    assert ed25519_public_openssh(key.public_key) == IDENTITY_LINE


def test_host_key(abandon_seed: bytearray) -> None:
    key = derive_ed25519_from_seed(abandon_seed, SSH_HOST_PATH)
    assert key.public_key.hex() == HOST_PUBLIC
    assert openssh_fingerprint(key.public_key) == HOST_FINGERPRINT
    assert ed25519_public_openssh(key.public_key, "alknet-host") == HOST_LINE + " alknet-host"


def test_encryption_key_v2_and_known_blob(abandon_seed: bytearray) -> None:
    key = derive_aes_key_from_seed(abandon_seed, encryption_path(2))
    assert key.path == "m/74'/2'/0'/0'"
    assert key.private_key.hex() == AES_V2
    assert key.public_key == b""
    assert decrypt_with_key(key.private_key, KNOWN_BLOB) == b"alknet"


def test_ethereum_key(abandon_seed: bytearray) -> None:
    key = derive_secp256k1_from_seed(abandon_seed, ETHEREUM_PATH)
    assert key.path == "m/44'/60'/0'/0/0"
    assert key.private_key.hex() == ETH_PRIVATE
    assert key.public_key.hex() == ETH_PUBLIC
    # the same value straight from slip10 with the BIP32 curve
    node = SLIP10.from_seed(bytes(abandon_seed), curve_name="secp256k1").get_child_from_path(ETHEREUM_PATH)
    assert node.privkey.hex() == ETH_PRIVATE
    assert node.pubkey.hex() == ETH_PUBLIC


def test_site_password_indices_and_passwords(abandon_seed: bytearray) -> None:
    assert site_password_index("example.com") == 595175158
    assert site_password_index("github.com") == 988479524
    assert site_password_path("example.com") == "m/74'/1'/0'/595175158'"
    site_key = derive_ed25519_from_seed(abandon_seed, site_password_path("example.com"))
    assert password_from_key(site_key.private_key, 32) == SITE_PASSWORD_32
    assert password_from_key(site_key.private_key, 16) == SITE_PASSWORD_16
    path0 = derive_ed25519_from_seed(abandon_seed, "m/74'/1'/0'/0'")
    assert password_from_key(path0.private_key, 20) == PATH0_PASSWORD_20
