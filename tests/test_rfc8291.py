"""The tests' own RFC 8291 code, checked against the RFC's worked example (§5, Appendix A)."""

from cryptography.hazmat.primitives.asymmetric import ec

from gateway.webpush import encrypt
from tests.rfc8291 import BrowserKeys, b64d, b64e, decrypt, derive

UA_PRIVATE = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94"
UA_PUBLIC = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
AS_PUBLIC = "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8"
AUTH = "BTBZMqHH6r4Tts7J_aSIgg"
SALT = "DGv6ra1nlYgDCS1FRnbzlw"
BODY = (
    "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27ml"
    "mlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPT"
    "pK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
)


def ua_key() -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(int.from_bytes(b64d(UA_PRIVATE), "big"), ec.SECP256R1())


def test_derived_key_and_nonce_match_appendix_a() -> None:
    cek, nonce = derive(ua_key(), b64d(AS_PUBLIC), b64d(AUTH), b64d(SALT))
    assert b64e(cek) == "oIhVW04MRdy2XN9CiKLxTg"
    assert b64e(nonce) == "4h_95klXJ5E_qnoN"


def test_decrypts_the_rfc_example_body() -> None:
    assert decrypt(b64d(BODY), ua_key(), b64d(AUTH)) == b"When I grow up, I want to be a watermelon"


def test_gateway_encryption_round_trips_through_independent_decryption() -> None:
    browser = BrowserKeys.new()
    body = encrypt(b'{"hello": "bob.near"}', browser.p256dh, browser.auth_b64)
    assert decrypt(body, browser.private, browser.auth) == b'{"hello": "bob.near"}'
    assert len(body) == len(b'{"hello": "bob.near"}') + 103


def test_gateway_encryption_reproduces_the_rfc_example_byte_for_byte() -> None:
    sender = ec.derive_private_key(
        int.from_bytes(b64d("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"), "big"), ec.SECP256R1()
    )
    body = encrypt(b"When I grow up, I want to be a watermelon", UA_PUBLIC, AUTH, sender=sender, salt=b64d(SALT))
    assert b64e(body) == BODY  # the RFC uses rs = 4096, as we do


def test_gateway_encryption_interoperates_with_pywebpush_decoding() -> None:
    import http_ece

    browser = BrowserKeys.new()
    body = encrypt(b"payload", browser.p256dh, browser.auth_b64)
    assert http_ece.decrypt(body, private_key=browser.private, auth_secret=browser.auth, version="aes128gcm") == (
        b"payload"
    )
