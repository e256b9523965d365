//! etcd's TLS policy flags: `--cipher-suites`, `--tls-min-version` and
//! `--tls-max-version`, checked with etcd's rules and messages
//! (embed `Config.Validate`, `tlsutil`) and turned into a rustls provider and
//! protocol versions for the client and peer listeners.
//!
//! As in Go, the suites listed restrict TLS 1.2 only; TLS 1.3's suites are
//! not configurable, and their Go names are accepted and have no effect.
//! Go knows suites rustls does not implement (CBC, RC4, 3DES, RSA key
//! exchange); those are refused by name rather than silently dropped.

use std::sync::Arc;

use rustls::crypto::{ring, CryptoProvider};
use rustls::{CipherSuite, SupportedProtocolVersion};

use crate::config::ServeArgs;

/// A TLS policy flag Cairn cannot honour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsPolicyError {
    #[error("unexpected TLS version {0:?} (must be one of: TLS1.2, TLS1.3)")]
    UnknownVersion(String),
    #[error("min version ({0}) is greater than max version ({1})")]
    MinAboveMax(String, String),
    #[error("cipher suites cannot be configured when only TLS1.3 is enabled")]
    SuitesWithOnlyTls13,
    #[error("unexpected TLS cipher suite {0:?}")]
    UnknownSuite(String),
    #[error("TLS cipher suite {0:?} is not supported by Cairn (rustls implements only ECDHE key exchange with AES-GCM or ChaCha20-Poly1305)")]
    UnsupportedSuite(String),
    #[error("--cipher-suites names no TLS 1.2 cipher suite, but --tls-max-version {0} allows only TLS 1.2")]
    NoTls12Suite(String),
}

/// How Go names a suite, and what rustls makes of it.
enum Suite {
    /// A TLS 1.2 suite rustls (ring) implements.
    Tls12(CipherSuite),
    /// A TLS 1.3 suite: accepted, not configurable.
    Tls13,
    /// Known to Go, not implemented by rustls.
    Unsupported,
}

/// Go's `crypto/tls` names (`tls.CipherSuites()`, `tls.InsecureCipherSuites()`
/// and the two ChaCha aliases etcd's `tlsutil` adds).
fn suite(name: &str) -> Option<Suite> {
    use CipherSuite as C;
    Some(match name {
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => {
            Suite::Tls12(C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)
        }
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => {
            Suite::Tls12(C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384)
        }
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => {
            Suite::Tls12(C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)
        }
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => {
            Suite::Tls12(C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384)
        }
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
        | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305" => {
            Suite::Tls12(C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256)
        }
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" | "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" => {
            Suite::Tls12(C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256)
        }
        "TLS_AES_128_GCM_SHA256" | "TLS_AES_256_GCM_SHA384" | "TLS_CHACHA20_POLY1305_SHA256" => {
            Suite::Tls13
        }
        "TLS_RSA_WITH_RC4_128_SHA"
        | "TLS_RSA_WITH_3DES_EDE_CBC_SHA"
        | "TLS_RSA_WITH_AES_128_CBC_SHA"
        | "TLS_RSA_WITH_AES_256_CBC_SHA"
        | "TLS_RSA_WITH_AES_128_CBC_SHA256"
        | "TLS_RSA_WITH_AES_128_GCM_SHA256"
        | "TLS_RSA_WITH_AES_256_GCM_SHA384"
        | "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA"
        | "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA"
        | "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA"
        | "TLS_ECDHE_RSA_WITH_RC4_128_SHA"
        | "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA"
        | "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"
        | "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA"
        | "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256"
        | "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256" => Suite::Unsupported,
        _ => return None,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Version {
    Tls12,
    Tls13,
}

/// etcd's `tlsutil.GetTLSVersion`; `None` is "let the library decide".
fn version(s: &str) -> Result<Option<Version>, TlsPolicyError> {
    match s {
        "" => Ok(None),
        "TLS1.2" => Ok(Some(Version::Tls12)),
        "TLS1.3" => Ok(Some(Version::Tls13)),
        other => Err(TlsPolicyError::UnknownVersion(other.to_owned())),
    }
}

/// What the listeners' rustls configs are built with.
#[derive(Debug, Clone)]
pub struct TlsPolicy {
    pub provider: Arc<CryptoProvider>,
    pub versions: Vec<&'static SupportedProtocolVersion>,
}

impl TlsPolicy {
    /// Checks the flags as etcd does, then maps them to rustls.
    pub fn from_args(args: &ServeArgs) -> Result<Self, TlsPolicyError> {
        Self::new(
            &args.cipher_suites,
            &args.tls_min_version,
            &args.tls_max_version,
        )
    }

    fn new(suites: &[String], min: &str, max: &str) -> Result<Self, TlsPolicyError> {
        // Flags given as "a,,b" or an empty --cipher-suites= carry empty names.
        let suites: Vec<&str> = suites
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .collect();
        let (min_v, max_v) = (version(min)?, version(max)?);
        if let (Some(lo), Some(hi)) = (min_v, max_v) {
            if lo > hi {
                return Err(TlsPolicyError::MinAboveMax(min.into(), max.into()));
            }
        }
        if min_v == Some(Version::Tls13) && !suites.is_empty() {
            return Err(TlsPolicyError::SuitesWithOnlyTls13);
        }
        let mut tls12 = Vec::new();
        for name in &suites {
            match suite(name) {
                Some(Suite::Tls12(s)) => tls12.push(s),
                Some(Suite::Tls13) => {}
                Some(Suite::Unsupported) => {
                    return Err(TlsPolicyError::UnsupportedSuite((*name).to_owned()))
                }
                None => return Err(TlsPolicyError::UnknownSuite((*name).to_owned())),
            }
        }
        let mut provider = ring::default_provider();
        if !suites.is_empty() {
            provider.cipher_suites.retain(|s| match s {
                rustls::SupportedCipherSuite::Tls13(_) => true,
                rustls::SupportedCipherSuite::Tls12(_) => tls12.contains(&s.suite()),
            });
        }
        let versions = match (min_v, max_v) {
            (Some(Version::Tls13), _) => vec![&rustls::version::TLS13],
            (_, Some(Version::Tls12)) => vec![&rustls::version::TLS12],
            _ => vec![&rustls::version::TLS13, &rustls::version::TLS12],
        };
        if max_v == Some(Version::Tls12) && !suites.is_empty() && tls12.is_empty() {
            return Err(TlsPolicyError::NoTls12Suite(max.into()));
        }
        Ok(TlsPolicy {
            provider: Arc::new(provider),
            versions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(suites: &[&str], min: &str, max: &str) -> Result<TlsPolicy, String> {
        let suites: Vec<String> = suites.iter().map(|s| s.to_string()).collect();
        TlsPolicy::new(&suites, min, max).map_err(|e| e.to_string())
    }

    fn suite_names(p: &TlsPolicy) -> Vec<String> {
        p.provider
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect()
    }

    #[test]
    fn defaults_allow_both_versions_and_all_suites() {
        let p = policy(&[], "TLS1.2", "").unwrap();
        assert_eq!(p.versions.len(), 2);
        assert_eq!(
            p.provider.cipher_suites.len(),
            ring::default_provider().cipher_suites.len()
        );
    }

    #[test]
    fn versions_follow_min_and_max() {
        let p = policy(&[], "TLS1.3", "").unwrap();
        assert_eq!(p.versions, [&rustls::version::TLS13]);
        let p = policy(&[], "TLS1.2", "TLS1.2").unwrap();
        assert_eq!(p.versions, [&rustls::version::TLS12]);
        let p = policy(&[], "", "TLS1.3").unwrap();
        assert_eq!(p.versions.len(), 2);
    }

    #[test]
    fn suites_restrict_tls12_and_keep_tls13() {
        let p = policy(
            &[
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                "TLS_AES_128_GCM_SHA256",
            ],
            "TLS1.2",
            "",
        )
        .unwrap();
        assert_eq!(
            suite_names(&p),
            [
                "TLS13_AES_256_GCM_SHA384",
                "TLS13_AES_128_GCM_SHA256",
                "TLS13_CHACHA20_POLY1305_SHA256",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
            ]
        );
        // etcd's alias for ChaCha20 without "_SHA256".
        let p = policy(&["TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305"], "", "").unwrap();
        assert!(suite_names(&p).contains(&"TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256".into()));
    }

    /// etcd's messages, and the suites Go knows but rustls lacks refused by name.
    #[test]
    fn refuses_as_etcd() {
        let e = |s: &[&str], min, max| policy(s, min, max).unwrap_err();
        assert_eq!(
            e(&[], "TLS1.1", ""),
            r#"unexpected TLS version "TLS1.1" (must be one of: TLS1.2, TLS1.3)"#
        );
        assert_eq!(
            e(&[], "TLS1.2", "tls1.3"),
            r#"unexpected TLS version "tls1.3" (must be one of: TLS1.2, TLS1.3)"#
        );
        assert_eq!(
            e(&[], "TLS1.3", "TLS1.2"),
            "min version (TLS1.3) is greater than max version (TLS1.2)"
        );
        assert_eq!(
            e(&["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"], "TLS1.3", ""),
            "cipher suites cannot be configured when only TLS1.3 is enabled"
        );
        assert_eq!(
            e(&["TLS_FANCY"], "TLS1.2", ""),
            r#"unexpected TLS cipher suite "TLS_FANCY""#
        );
        assert!(
            e(&["TLS_RSA_WITH_AES_128_CBC_SHA"], "TLS1.2", "").starts_with(
                r#"TLS cipher suite "TLS_RSA_WITH_AES_128_CBC_SHA" is not supported by Cairn"#
            )
        );
        assert_eq!(
            e(&["TLS_AES_128_GCM_SHA256"], "TLS1.2", "TLS1.2"),
            "--cipher-suites names no TLS 1.2 cipher suite, but --tls-max-version TLS1.2 allows only TLS 1.2"
        );
    }
}
