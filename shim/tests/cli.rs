//! The binary's defaults, as an operator meets them.

mod common;

use common::{etcdctl_run, wait_healthy, Cairn};

/// `cairn` with no flags serves one member on 127.0.0.1:2379 from ./default.cairn.
#[test]
fn no_flags_serves_default_member_on_2379() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Cairn::spawn(dir.path(), &[]);
    let ep = "127.0.0.1:2379";
    wait_healthy(&mut server, ep, &[]);
    assert!(etcdctl_run(&["--endpoints", ep, "put", "k", "v"], None)
        .status
        .success());
    let out = etcdctl_run(&["--endpoints", ep, "member", "list", "-w", "json"], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\"name\":\"default\""), "{text}");
    // The member answering on 2379 is the one this test started in its own
    // data dir, not something else that happened to hold the port.
    let identity =
        std::fs::read_to_string(dir.path().join("default.cairn").join("member.json")).unwrap();
    let member_id = identity
        .split("\"member_id\":")
        .nth(1)
        .and_then(|rest| {
            rest.trim_start()
                .split(|c: char| !c.is_ascii_digit())
                .next()
        })
        .unwrap()
        .to_string();
    assert!(
        text.contains(&format!("\"ID\":{member_id}")),
        "member {member_id} not in {text}"
    );
}

#[test]
fn help_lists_etcd_flag_names() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--name",
        "--data-dir",
        "--listen-client-urls",
        "--advertise-client-urls",
        "--max-request-bytes",
        "--quota-backend-bytes",
        "--cert-file",
        "--key-file",
        "--trusted-ca-file",
        "--client-cert-auth",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}:\n{text}");
    }
}
