//! CNI errors: the spec's well-known codes, kino-cni's own, and the error JSON printed on
//! stdout. How the agent's answers map onto them is the agent client's (`agent.rs`), so this
//! file names nothing else of the crate.

use serde::Serialize;

/// Well-known CNI error codes (spec 1.1.0, "Error"); 1–99 are reserved to the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 1: the configuration's cniVersion is not one this plugin speaks.
    IncompatibleVersion,
    /// 2: a field of the network configuration is not supported.
    UnsupportedField,
    /// 3: the container is unknown or does not exist.
    UnknownContainer,
    /// 4: a required environment variable (CNI_COMMAND, CNI_CONTAINERID, …) is missing or invalid.
    InvalidEnvironment,
    /// 5: reading stdin failed.
    IoFailure,
    /// 6: stdin could not be decoded as a JSON object.
    DecodingFailure,
    /// 7: the network configuration is invalid.
    InvalidNetworkConfig,
    /// 11: a transient condition; the runtime should try again later.
    TryAgainLater,
    /// 50: the plugin cannot serve ADD requests (STATUS).
    PluginNotAvailable,
    /// 51: the plugin cannot serve ADD requests and existing containers may have limited
    /// connectivity (STATUS).
    LimitedConnectivity,
    /// 100 (kino-cni's own): CHECK found the attachment missing or not as `prevResult` says.
    AttachmentMismatch,
    /// 999 (libcni's "internal error"): the agent failed in a way no other code describes.
    Internal,
}

impl ErrorCode {
    /// The numeric code put in the error JSON.
    pub fn code(self) -> u32 {
        match self {
            ErrorCode::IncompatibleVersion => 1,
            ErrorCode::UnsupportedField => 2,
            ErrorCode::UnknownContainer => 3,
            ErrorCode::InvalidEnvironment => 4,
            ErrorCode::IoFailure => 5,
            ErrorCode::DecodingFailure => 6,
            ErrorCode::InvalidNetworkConfig => 7,
            ErrorCode::TryAgainLater => 11,
            ErrorCode::PluginNotAvailable => 50,
            ErrorCode::LimitedConnectivity => 51,
            ErrorCode::AttachmentMismatch => 100,
            ErrorCode::Internal => 999,
        }
    }
}

/// A CNI failure: code, short message and long details, as the spec's error JSON carries them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI error {}: {msg}: {details}", code.code())]
pub struct CniError {
    /// The well-known code.
    pub code: ErrorCode,
    /// Short message (the spec's `msg`).
    pub msg: String,
    /// What went wrong in full and what to do about it (the spec's `details`).
    pub details: String,
}

impl CniError {
    /// An error with `code`, a short `msg` and the full `details`.
    pub fn new(code: ErrorCode, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error JSON object for a reply in `cni_version` (the config's when it was
    /// readable, the preferred version otherwise: the caller knows which).
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct ErrorResult<'a> {
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            details: &'a str,
        }
        let result = ErrorResult {
            cni_version,
            code: self.code.code(),
            msg: &self.msg,
            details: &self.details,
        };
        serde_json::to_string(&result).expect("a struct of strings and numbers serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_spec() {
        assert_eq!(ErrorCode::IncompatibleVersion.code(), 1);
        assert_eq!(ErrorCode::UnsupportedField.code(), 2);
        assert_eq!(ErrorCode::UnknownContainer.code(), 3);
        assert_eq!(ErrorCode::InvalidEnvironment.code(), 4);
        assert_eq!(ErrorCode::IoFailure.code(), 5);
        assert_eq!(ErrorCode::DecodingFailure.code(), 6);
        assert_eq!(ErrorCode::InvalidNetworkConfig.code(), 7);
        assert_eq!(ErrorCode::TryAgainLater.code(), 11);
        assert_eq!(ErrorCode::PluginNotAvailable.code(), 50);
        assert_eq!(ErrorCode::LimitedConnectivity.code(), 51);
        assert_eq!(ErrorCode::AttachmentMismatch.code(), 100);
        assert_eq!(ErrorCode::Internal.code(), 999);
    }

    #[test]
    fn error_json_has_the_spec_fields() {
        let error = CniError::new(ErrorCode::TryAgainLater, "short", "long");
        let json: serde_json::Value =
            serde_json::from_str(&error.to_json("1.0.0")).expect("valid JSON");
        assert_eq!(
            json,
            serde_json::json!({"cniVersion": "1.0.0", "code": 11, "msg": "short", "details": "long"})
        );
        // The version is the caller's: the config's, or the preferred one (lib.rs's
        // `errors_use_the_config_version` checks that choice end to end).
        let json: serde_json::Value =
            serde_json::from_str(&error.to_json("0.4.0")).expect("valid JSON");
        assert_eq!(json["cniVersion"], "0.4.0");
    }
}
