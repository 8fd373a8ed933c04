//! `{"error":{"code":"<code>","message":"<human text>"}}`, the only shape an error takes on the
//! public and admin listeners (docs/design.md §4.2).

use votes_core::ErrorCode;

#[derive(serde::Serialize)]
struct Envelope<'a> {
    error: Inner<'a>,
}

#[derive(serde::Serialize)]
struct Inner<'a> {
    code: &'static str,
    message: &'a str,
}

/// The serialized body of an error answer.
pub fn error_body(code: ErrorCode, message: &str) -> Vec<u8> {
    serde_json::to_vec(&Envelope {
        error: Inner {
            code: code.as_str(),
            message,
        },
    })
    .expect("a struct of strings always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_contract_shape_and_escapes_the_message() {
        let body = error_body(ErrorCode::TooLarge, "body is over 1 KiB \"really\"");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "too_large");
        assert_eq!(v["error"]["message"], "body is over 1 KiB \"really\"");
        assert_eq!(v.as_object().unwrap().len(), 1);
    }
}
