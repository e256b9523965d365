//! Values etcd refuses for the auto-compaction, keepalive and TLS policy
//! flags are refused at start with etcd's words, before anything is written.

use std::process::Command;

/// Starts `cairn` with `flags` in a fresh directory; its stderr, after
/// checking it exited with an error and created no data dir.
fn refused(flags: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "--data-dir",
            "data",
            "--listen-peer-urls",
            "http://127.0.0.1:0",
        ])
        .args(["--listen-client-urls", "http://127.0.0.1:0"])
        .args(flags)
        .env("RUST_BACKTRACE", "0")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{flags:?} started:\n{stderr}");
    assert!(
        !dir.path().join("data").exists(),
        "{flags:?} wrote a data dir"
    );
    stderr
}

#[test]
fn invalid_values_are_refused_with_etcds_messages() {
    for (flags, message) in [
        (
            &["--auto-compaction-mode", "hourly"][..],
            r#"unknown auto-compaction-mode "hourly""#,
        ),
        (
            &["--auto-compaction-retention", "1x"][..],
            r#"error parsing CompactionRetention: time: unknown unit "x" in duration "1x""#,
        ),
        (
            &[
                "--auto-compaction-mode",
                "revision",
                "--auto-compaction-retention",
                "lots",
            ][..],
            r#"error parsing CompactionRetention: time: invalid duration "lots""#,
        ),
        (
            &["--grpc-keepalive-timeout", "5"][..],
            r#"time: missing unit in duration "5""#,
        ),
        (
            &["--tls-min-version", "TLS1.1"][..],
            r#"unexpected TLS version "TLS1.1" (must be one of: TLS1.2, TLS1.3)"#,
        ),
        (
            &["--tls-min-version", "TLS1.3", "--tls-max-version", "TLS1.2"][..],
            "min version (TLS1.3) is greater than max version (TLS1.2)",
        ),
        (
            &[
                "--tls-min-version",
                "TLS1.3",
                "--cipher-suites",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            ][..],
            "cipher suites cannot be configured when only TLS1.3 is enabled",
        ),
        (
            &[
                "--cipher-suites",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_NOPE",
            ][..],
            r#"unexpected TLS cipher suite "TLS_NOPE""#,
        ),
        (
            &["--cipher-suites", "TLS_RSA_WITH_AES_128_CBC_SHA"][..],
            r#"TLS cipher suite "TLS_RSA_WITH_AES_128_CBC_SHA" is not supported by Cairn"#,
        ),
    ] {
        let stderr = refused(flags);
        assert!(
            stderr.contains(message),
            "{flags:?}: want {message:?} in:\n{stderr}"
        );
    }
}
