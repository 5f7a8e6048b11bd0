//! Envoy's `verify_signature` foreign function, as messages: the arguments
//! a module sends and the result it gets back (protobuf, as Envoy's
//! `source/extensions/common/wasm/ext/verify_signature.proto` defines them).
//! Pure: `filter` makes the call.

/// `envoy.source.extensions.common.wasm.VerifySignatureArguments`.
#[derive(Clone, PartialEq, prost::Message)]
struct VerifySignatureArguments {
    /// Hash function, e.g. `sha256`.
    #[prost(string, tag = "1")]
    hash_function: String,
    /// The public key as SubjectPublicKeyInfo DER.
    #[prost(bytes = "vec", tag = "2")]
    public_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    signature: Vec<u8>,
    /// The signed text; the host hashes it.
    #[prost(bytes = "vec", tag = "4")]
    text: Vec<u8>,
}

/// `envoy.source.extensions.common.wasm.VerifySignatureResult`.
#[derive(Clone, PartialEq, prost::Message)]
struct VerifySignatureResult {
    #[prost(bool, tag = "1")]
    result: bool,
    #[prost(string, tag = "2")]
    error: String,
}

/// The arguments of an RSASSA-PKCS1-v1_5 SHA-256 verification (RS256).
pub(crate) fn rs256_arguments(spki_der: &[u8], text: &[u8], signature: &[u8]) -> Vec<u8> {
    prost::Message::encode_to_vec(&VerifySignatureArguments {
        hash_function: "sha256".into(),
        public_key: spki_der.to_vec(),
        signature: signature.to_vec(),
        text: text.to_vec(),
    })
}

/// Whether the host said the signature is valid; `None` when its answer is
/// not a result message.
pub(crate) fn read_result(bytes: &[u8]) -> Option<bool> {
    <VerifySignatureResult as prost::Message>::decode(bytes)
        .ok()
        .map(|r| r.result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_the_four_fields_in_wire_format() {
        let bytes = rs256_arguments(&[1, 2], b"a.b", &[9]);
        assert_eq!(
            bytes,
            [
                0x0a, 6, b's', b'h', b'a', b'2', b'5', b'6', // 1: hash_function
                0x12, 2, 1, 2, // 2: public_key
                0x1a, 1, 9, // 3: signature
                0x22, 3, b'a', b'.', b'b', // 4: text
            ]
        );
    }

    #[test]
    fn results_read_true_false_or_nothing() {
        assert_eq!(read_result(&[0x08, 1]), Some(true));
        assert_eq!(read_result(&[0x08, 0, 0x12, 3, b'b', b'a', b'd']), Some(false));
        assert_eq!(
            read_result(&[]),
            Some(false),
            "proto3: an empty message is all defaults"
        );
        assert_eq!(read_result(&[0xff, 0xff]), None);
    }
}
