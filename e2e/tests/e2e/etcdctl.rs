//! The real etcdctl 3.5 (`ETCDCTL_API=3`) against Cairn.
//!
//! `kv_commands_match_etcd` runs one scripted sequence of commands
//! (put, get with --prefix/--rev/--limit/--sort-by/--order/--keys-only/
//! --count-only/-w json/-w fields, del --prev-kv, txn from stdin, compaction
//! and reads below it) against a real etcd and against Cairn, and compares
//! exit code, stdout, and the `Error:` lines of stderr after normalising only
//! cluster_id, member_id and raft_term (JSON headers; "ClusterID", "MemberID",
//! "RaftTerm" lines of `-w fields`). stderr's other lines are etcdctl's own
//! retry logs with timestamps and pointers. All differences are collected and
//! reported together.
//!
//! `endpoint_and_member_commands` checks the commands whose output is
//! not the same across implementations (ids, version, sizes, timings) by
//! exact expected content: `endpoint status -w json` (and the table form),
//! `endpoint health` (and -w json), `member list -w json` (and the table
//! form).

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use cairn_e2e::etcdctl::strip_header_ids;
use cairn_e2e::etcdctl::{etcdctl, CtlOutput};
use cairn_e2e::{Kind, Member};
use serde_json::Value;

/// The comparable part of an etcdctl run.
#[derive(Debug, PartialEq, Eq)]
struct Normalized {
    code: i32,
    stdout: String,
    errors: Vec<String>,
}

fn normalize(out: &CtlOutput) -> Normalized {
    let stdout = match serde_json::from_str::<Value>(out.stdout.trim()) {
        Ok(mut v) if out.stdout.trim_start().starts_with(['{', '[']) => {
            strip_header_ids(&mut v);
            v.to_string()
        }
        _ => out
            .stdout
            .lines()
            .filter(|l| {
                !(l.starts_with("\"ClusterID\" : ")
                    || l.starts_with("\"MemberID\" : ")
                    || l.starts_with("\"RaftTerm\" : "))
            })
            .collect::<Vec<_>>()
            .join("\n"),
    };
    Normalized {
        code: out.code,
        stdout,
        errors: out
            .stderr
            .lines()
            .filter(|l| l.starts_with("Error:"))
            .map(str::to_string)
            .collect(),
    }
}

struct Duo {
    etcd: Member,
    /// The member under test (Cairn; etcd in the self-check).
    cairn: Member,
    differences: Vec<String>,
    steps: usize,
}

impl Duo {
    async fn start(candidate: Kind) -> Result<Duo> {
        let (e, c) = tokio::join!(Member::start(Kind::Etcd), Member::start(candidate));
        Ok(Duo {
            etcd: e.context("starting etcd")?,
            cairn: c.context("starting cairn")?,
            differences: Vec::new(),
            steps: 0,
        })
    }

    /// Runs the command on both; records a difference if the normalised
    /// results differ. Returns etcd's raw output (the reference).
    async fn both(&mut self, args: &[&str], stdin: Option<&str>) -> Result<CtlOutput> {
        self.steps += 1;
        let (ep_e, ep_c) = (self.etcd.host_port(), self.cairn.host_port());
        let (e, c) = tokio::join!(etcdctl(&ep_e, args, stdin), etcdctl(&ep_c, args, stdin));
        let (e, c) = (e?, c?);
        let (ne, nc) = (normalize(&e), normalize(&c));
        if std::env::var_os("CAIRN_E2E_VERBOSE").is_some() {
            eprintln!("$ etcdctl {} {stdin:?}\n{ne:?}", args.join(" "));
        }
        if ne != nc {
            let stdin_note = stdin
                .map(|s| format!("\n  stdin: {s:?}"))
                .unwrap_or_default();
            self.differences.push(format!(
                "etcdctl {}{stdin_note}\n  etcd : code {} stdout {:?} errors {:?}\n  cairn: code {} stdout {:?} errors {:?}\n  (cairn raw stderr: {:?})",
                args.join(" "),
                ne.code,
                ne.stdout,
                ne.errors,
                nc.code,
                nc.stdout,
                nc.errors,
                c.stderr
            ));
        }
        Ok(e)
    }

    fn finish(mut self) -> Result<()> {
        if self.differences.is_empty() {
            eprintln!(
                "{} etcdctl commands: identical output on etcd and cairn",
                self.steps
            );
            return Ok(());
        }
        self.etcd.keep_on_drop();
        self.cairn.keep_on_drop();
        bail!(
            "{} of {} etcdctl commands differ between etcd and cairn:\n\n{}\n\ncairn log: {}",
            self.differences.len(),
            self.steps,
            self.differences.join("\n\n"),
            self.cairn.log_path().display()
        )
    }
}

fn header_revision(out: &CtlOutput) -> Result<i64> {
    let v: Value = serde_json::from_str(out.stdout.trim())
        .with_context(|| format!("not JSON: {:?}", out.stdout))?;
    v["header"]["revision"]
        .as_i64()
        .with_context(|| format!("no header.revision in {v}"))
}

server_test!(
    /// The etcd run is the harness self-check: etcd against etcd must show
    /// no difference.
    kv_commands_match_etcd,
    kv_commands,
    ignore_etcd
);

async fn kv_commands(candidate: Kind) -> Result<()> {
    let mut d = Duo::start(candidate).await?;

    // Writes.
    for (k, v) in [
        ("a", "1"),
        ("b", "2"),
        ("ab", "3"),
        ("a", "11"),
        ("foo/1", "x"),
        ("foo/2", "y"),
        ("foo/3", "z"),
        ("v3", "one"),
        ("v2", "one"),
        ("v3", "two"),
        ("v2", "two"),
        ("v3", "three"),
        ("zz", "value with spaces"),
    ] {
        d.both(&["put", k, v], None).await?;
    }
    d.both(&["put", "--prev-kv", "b", "22"], None).await?;
    d.both(&["put", "empty", ""], None).await?;

    // Reads.
    let r = d.both(&["get", "a", "-w", "json"], None).await?;
    let rev = header_revision(&r)?;
    for args in [
        vec!["get", "a"],
        vec!["get", "missing"],
        vec!["get", "a", "--prefix"],
        vec!["get", "a", "--rev=2"],
        vec!["get", "a", "--rev=4"],
        vec!["get", "a", "--prefix", "--rev=3"],
        vec!["get", "foo/", "--prefix", "--limit=2"],
        vec!["get", "foo/", "--prefix", "--limit=2", "-w", "json"],
        vec!["get", "", "--from-key"],
        vec!["get", "", "--from-key", "--keys-only"],
        vec!["get", "a", "c"],
        vec!["get", "--prefix", "foo/", "--keys-only"],
        vec!["get", "--prefix", "foo/", "--count-only", "-w", "fields"],
        vec!["get", "--prefix", "foo/", "-w", "fields", "--limit=1"],
        vec!["get", "--print-value-only", "zz"],
        vec!["get", "--prefix", "a", "-w", "json"],
        vec!["get", "empty", "-w", "json"],
        vec![
            "get",
            "",
            "--from-key",
            "--sort-by=MODIFY",
            "--order=DESCEND",
        ],
        vec![
            "get",
            "",
            "--from-key",
            "--sort-by=CREATE",
            "--order=ASCEND",
            "--limit=3",
        ],
        vec![
            "get",
            "",
            "--from-key",
            "--sort-by=KEY",
            "--order=DESCEND",
            "--limit=4",
        ],
        vec![
            "get",
            "foo/",
            "--prefix",
            "--sort-by=VALUE",
            "--order=DESCEND",
        ],
        // versions of v2 (2) and v3 (3) differ: no ties.
        vec![
            "get",
            "v",
            "--prefix",
            "--sort-by=VERSION",
            "--order=DESCEND",
        ],
        vec![
            "get",
            "v",
            "--prefix",
            "--sort-by=VERSION",
            "--order=ASCEND",
            "-w",
            "json",
        ],
        vec![
            "get",
            "",
            "--from-key",
            "--sort-by=MODIFY",
            "--order=ASCEND",
            "--limit=2",
            "-w",
            "json",
        ],
        vec!["get", "", "--from-key", "--rev=5", "-w", "json"],
        vec!["get", "a", "--consistency=s"],
        vec!["get", "", "--prefix"],
    ] {
        d.both(&args, None).await?;
    }

    // Deletes.
    for args in [
        vec!["del", "--prev-kv", "foo/1"],
        vec!["del", "--prev-kv", "--prefix", "foo/"],
        vec!["del", "missing"],
        vec!["del", "--prev-kv", "a", "ac"],
        vec!["del", "--prev-kv", "v", "--from-key", "-w", "json"],
    ] {
        d.both(&args, None).await?;
    }

    // Txn from stdin (compares, blank line, success ops, blank line, failure ops).
    for (args, input) in [
        (
            vec!["txn"],
            "mod(\"b\") > \"0\"\n\nput b \"from-txn\"\nget b\n\nput c \"failed\"\n\n",
        ),
        (
            vec!["txn"],
            "create(\"nope\") > \"0\"\nval(\"b\") = \"from-txn\"\n\nput x \"1\"\n\nput y \"2\"\nget zz\n\n",
        ),
        (
            vec!["txn", "-w", "json"],
            "version(\"b\") = \"3\"\nval(\"zz\") = \"value with spaces\"\n\nget \"\" --from-key\nput t \"3\"\ndel y --prev-kv\n\nput y \"2\"\n\n",
        ),
        (
            vec!["txn", "-w", "json"],
            "val(\"b\") < \"a\"\n\n\nget b\ndel b\n\n",
        ),
        (vec!["txn"], "\n\nput dup 1\nput dup 2\n\n\n"),
        (vec!["txn"], "\n\nput \"\" 1\n\n\n"),
    ] {
        d.both(&args, Some(input)).await?;
    }

    // Compaction, and reads at and below the compacted revision.
    let r = d.both(&["get", "b", "-w", "json"], None).await?;
    let now = header_revision(&r)?;
    ensure!(now > rev, "revision did not advance ({rev} -> {now})");
    let compact_at = (now - 4).to_string();
    let below = (now - 5).to_string();
    let future = (now + 100).to_string();
    for args in [
        vec!["compaction", compact_at.as_str()],
        vec!["get", "b", "--rev", below.as_str()],
        vec!["get", "", "--from-key", "--rev", compact_at.as_str()],
        vec!["get", "b", "--rev", future.as_str()],
        vec!["compaction", compact_at.as_str()],
        vec!["compaction", below.as_str()],
        vec!["compaction", future.as_str()],
        vec!["compaction", "--physical", now.to_string().as_str()],
        vec!["get", "", "--from-key", "-w", "json"],
        vec!["put", "", "x"],
    ] {
        d.both(&args, None).await?;
    }
    // The compacted read must fail with exactly this on Cairn (whatever etcd does).
    let c = etcdctl(
        &d.cairn.host_port(),
        &["get", "b", "--rev", below.as_str()],
        None,
    )
    .await?;
    ensure!(
        c.code != 0
            && c.stderr
                .lines()
                .any(|l| l == "Error: etcdserver: mvcc: required revision has been compacted"),
        "cairn: get --rev below the compaction: expected the compacted error, got {c:?}"
    );
    d.finish()
}

/// "3.6.0" / "3.6.0-alpha.1" -> (3, 6, 0).
fn semver(v: &str) -> Option<(u64, u64, u64)> {
    let core = v.split(['-', '+']).next()?;
    let mut it = core.split('.').map(|p| p.parse::<u64>().ok());
    let t = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(t)
}

fn parse_json(what: &str, out: &CtlOutput) -> Result<Value> {
    ensure!(out.code == 0, "{what}: exit code {}: {out:?}", out.code);
    serde_json::from_str(out.stdout.trim()).with_context(|| format!("{what}: not JSON: {out:?}"))
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

/// `min_version`: the lowest acceptable version (3.6.0 for Cairn; the
/// self-check against etcd 3.5 passes 3.5.0).
async fn endpoint_checks(
    etcd: &Member,
    cairn: &Member,
    min_version: (u64, u64, u64),
) -> Result<Vec<String>> {
    let mut problems: Vec<String> = Vec::new();
    let ep = cairn.host_port();

    // Make the revision something other than the initial one.
    let mut client = cairn.client().await?;
    client.put("status-probe", "v", None).await?;
    let rev = client
        .get("status-probe", None)
        .await?
        .header()
        .context("no header")?
        .revision();

    // endpoint status -w json
    let out = etcdctl(&ep, &["endpoint", "status", "-w", "json"], None).await?;
    let v = parse_json("endpoint status -w json", &out)?;
    let e_out = etcdctl(
        &etcd.host_port(),
        &["endpoint", "status", "-w", "json"],
        None,
    )
    .await?;
    let ev = parse_json("etcd endpoint status -w json", &e_out)?;
    let st = &v[0]["Status"];
    let mut check = |ok: bool, msg: String| {
        if !ok {
            problems.push(msg);
        }
    };
    check(
        v.as_array().map(|a| a.len()) == Some(1) && v[0]["Endpoint"].as_str() == Some(ep.as_str()),
        format!("endpoint status: expected one entry for {ep}, got {v}"),
    );
    let version = st["version"].as_str().unwrap_or("");
    check(
        semver(version).is_some_and(|s| s >= min_version),
        format!("endpoint status: version {version:?} is not a semver >= {min_version:?} (in {v})"),
    );
    let member_id = st["header"]["member_id"].as_u64().unwrap_or(0);
    check(
        member_id != 0,
        format!("endpoint status: header.member_id missing/zero in {v}"),
    );
    check(
        st["header"]["cluster_id"].as_u64().unwrap_or(0) != 0,
        format!("endpoint status: header.cluster_id missing/zero in {v}"),
    );
    check(
        st["leader"].as_u64() == Some(member_id),
        format!("endpoint status: leader should be this member ({member_id}) in {v}"),
    );
    check(
        st["header"]["revision"].as_i64() == Some(rev),
        format!("endpoint status: header.revision should be {rev} in {v}"),
    );
    check(
        st["dbSize"].as_i64().unwrap_or(0) > 0,
        format!("endpoint status: dbSize should be > 0 in {v}"),
    );
    check(
        st["raftTerm"].as_u64().unwrap_or(0) > 0 && st["raftIndex"].as_u64().unwrap_or(0) > 0,
        format!("endpoint status: raftTerm and raftIndex should be > 0 in {v}"),
    );
    // Every field etcd fills (omitempty: present = non-zero) is filled by Cairn.
    let (ek, ck) = (keys(&ev[0]["Status"]), keys(st));
    let missing: Vec<&String> = ek.iter().filter(|k| !ck.contains(k)).collect();
    check(
        missing.is_empty(),
        format!("endpoint status: fields etcd returns but cairn does not: {missing:?} (etcd: {ev}, cairn: {v})"),
    );
    let (ehk, chk) = (keys(&ev[0]["Status"]["header"]), keys(&st["header"]));
    check(
        ehk == chk,
        format!("endpoint status: header fields differ: etcd {ehk:?}, cairn {chk:?}"),
    );

    // endpoint status (table): "ep, id, version, size, isLeader, isLearner, term, index, applied, errors"
    let out = etcdctl(&ep, &["endpoint", "status"], None).await?;
    let cols: Vec<&str> = out.stdout.trim().split(", ").collect();
    check(
        out.code == 0
            && cols.len() >= 9
            && cols[0] == ep
            && cols[1] == format!("{member_id:x}")
            && cols[2] == version
            && cols[4] == "true"
            && cols[5] == "false",
        format!("endpoint status (table): unexpected {out:?}"),
    );

    // endpoint health
    let out = etcdctl(&ep, &["endpoint", "health"], None).await?;
    check(
        out.code == 0
            && out.stdout.trim().starts_with(&format!(
                "{ep} is healthy: successfully committed proposal: took = "
            )),
        format!("endpoint health: unexpected {out:?}"),
    );
    let out = etcdctl(&ep, &["endpoint", "health", "-w", "json"], None).await?;
    match parse_json("endpoint health -w json", &out) {
        Ok(h) => check(
            h[0]["endpoint"].as_str() == Some(ep.as_str())
                && h[0]["health"] == Value::Bool(true)
                && h[0].get("error").is_none(),
            format!("endpoint health -w json: unexpected {h}"),
        ),
        Err(e) => check(false, format!("{e:#}")),
    }

    // member list -w json
    let out = etcdctl(&ep, &["member", "list", "-w", "json"], None).await?;
    let e_out = etcdctl(&etcd.host_port(), &["member", "list", "-w", "json"], None).await?;
    let ev = parse_json("etcd member list -w json", &e_out)?;
    match parse_json("member list -w json", &out) {
        Ok(m) => {
            let members = m["members"].as_array().cloned().unwrap_or_default();
            check(
                members.len() == 1,
                format!("member list: expected exactly one member, got {m}"),
            );
            if let Some(mem) = members.first() {
                check(
                    mem["ID"].as_u64() == Some(member_id)
                        && m["header"]["member_id"].as_u64() == Some(member_id),
                    format!("member list: ID and header.member_id should be {member_id} (the status member id): {m}"),
                );
                check(
                    mem["name"].as_str() == Some(cairn.name()),
                    format!("member list: name should be {:?}: {m}", cairn.name()),
                );
                check(
                    mem["clientURLs"] == serde_json::json!([cairn.endpoint()]),
                    format!(
                        "member list: clientURLs should be [{:?}]: {m}",
                        cairn.endpoint()
                    ),
                );
                let (ek, ck) = (keys(&ev["members"][0]), keys(mem));
                let missing: Vec<&String> = ek
                    .iter()
                    .filter(|k| !ck.contains(k) && *k != "peerURLs")
                    .collect();
                check(
                    missing.is_empty(),
                    format!("member list: member fields etcd returns but cairn does not: {missing:?} (etcd: {ev}, cairn: {m})"),
                );
            }
        }
        Err(e) => check(false, format!("{e:#}")),
    }

    // member list (table): "id, started, name, peer urls, client urls, isLearner"
    let out = etcdctl(&ep, &["member", "list"], None).await?;
    let cols: Vec<&str> = out.stdout.trim().split(", ").collect();
    check(
        out.code == 0
            && cols.len() == 6
            && cols[0] == format!("{member_id:x}")
            && cols[1] == "started"
            && cols[2] == cairn.name()
            && cols[4] == cairn.endpoint()
            && cols[5] == "false",
        format!("member list (table): unexpected {out:?}"),
    );
    Ok(problems)
}

server_test!(
    /// The etcd run is the harness self-check: etcd 3.5 passes the same
    /// checks (except the version).
    endpoint_and_member_commands,
    endpoint_and_member,
    ignore_etcd
);

async fn endpoint_and_member(candidate: Kind) -> Result<()> {
    // Cairn reports 3.6; etcd 3.5 passes the same checks with its version.
    let min_version = match candidate {
        Kind::Cairn => (3, 6, 0),
        Kind::Etcd => (3, 5, 0),
    };
    let (e, c) = tokio::join!(Member::start(Kind::Etcd), Member::start(candidate));
    let (etcd, mut cairn) = (e?, c?);
    let checks = endpoint_checks(&etcd, &cairn, min_version);
    let problems = tokio::time::timeout(Duration::from_secs(120), checks)
        .await
        .context("endpoint checks timed out")??;
    if !problems.is_empty() {
        cairn.keep_on_drop();
        bail!(
            "{} problem(s) with etcdctl endpoint/member commands against cairn:\n{}\ncairn log: {}",
            problems.len(),
            problems.join("\n"),
            cairn.log_path().display()
        );
    }
    Ok(())
}
