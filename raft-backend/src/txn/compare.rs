//! etcd's Compare, the guard of a txn.

use cairn_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn_proto::etcdserverpb::Compare;
use cairn_proto::mvccpb::KeyValue;

use crate::error::Result;
use crate::mvcc::{KeyRange, TxnRead};

/// Over a range every key must satisfy the compare; a missing key compares
/// as zeroes, except that a VALUE compare on a missing key is false.
pub fn compare(txn: &impl TxnRead, c: &Compare) -> Result<bool> {
    let kr = KeyRange::new(&c.key, &c.range_end);
    let is_value = c.target == CompareTarget::Value as i32;
    let kvs = txn.fetch(&kr, txn.current_rev(), None, is_value)?;
    if kvs.is_empty() {
        return Ok(!is_value && compare_kv(c, &KeyValue::default()));
    }
    Ok(kvs.iter().all(|kv| compare_kv(c, kv)))
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    // A target unknown to this version compares equal; so does a target
    // whose value is missing or of another target, against 0.
    let ord = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Value) => {
            let v: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(v)
        }
        Ok(target) => {
            let want = match (&c.target_union, target) {
                (Some(TargetUnion::CreateRevision(v)), CompareTarget::Create)
                | (Some(TargetUnion::ModRevision(v)), CompareTarget::Mod)
                | (Some(TargetUnion::Version(v)), CompareTarget::Version)
                | (Some(TargetUnion::Lease(v)), CompareTarget::Lease) => *v,
                _ => 0,
            };
            let have = match target {
                CompareTarget::Create => kv.create_revision,
                CompareTarget::Mod => kv.mod_revision,
                CompareTarget::Version => kv.version,
                CompareTarget::Lease => kv.lease,
                CompareTarget::Value => 0,
            };
            have.cmp(&want)
        }
        Err(_) => std::cmp::Ordering::Equal,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord.is_eq(),
        Ok(CompareResult::NotEqual) => ord.is_ne(),
        Ok(CompareResult::Greater) => ord.is_gt(),
        Ok(CompareResult::Less) => ord.is_lt(),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestStore;

    fn cmp(
        key: &str,
        end: &str,
        target: CompareTarget,
        result: CompareResult,
        value: TargetUnion,
    ) -> Compare {
        Compare {
            key: key.into(),
            range_end: end.into(),
            target: target as i32,
            result: result as i32,
            target_union: Some(value),
        }
    }

    #[test]
    fn a_missing_key_compares_as_zeroes_except_by_value() {
        let s = TestStore::new();
        let check = |c: Compare| s.read(|r| compare(r, &c)).unwrap();
        use CompareResult::*;
        use CompareTarget::*;
        assert!(check(cmp("x", "", Version, Equal, TargetUnion::Version(0))));
        assert!(check(cmp(
            "x",
            "",
            Create,
            Less,
            TargetUnion::CreateRevision(1)
        )));
        assert!(check(cmp("x", "", Lease, Equal, TargetUnion::Lease(0))));
        assert!(!check(cmp(
            "x",
            "",
            Value,
            Equal,
            TargetUnion::Value(vec![])
        )));
        assert!(!check(cmp(
            "x",
            "",
            Value,
            NotEqual,
            TargetUnion::Value(b"v".to_vec())
        )));
    }

    #[test]
    fn over_a_range_every_key_must_satisfy_the_compare() {
        let mut s = TestStore::new();
        s.put("a", "1"); // rev 2
        s.put("b", "1"); // rev 3
        s.put("b", "2"); // rev 4
        let check = |c: Compare| s.read(|r| compare(r, &c)).unwrap();
        use CompareResult::*;
        use CompareTarget::*;
        assert!(check(cmp(
            "a",
            "c",
            Version,
            Greater,
            TargetUnion::Version(0)
        )));
        assert!(!check(cmp(
            "a",
            "c",
            Version,
            Equal,
            TargetUnion::Version(1)
        )));
        assert!(check(cmp("a", "c", Mod, Less, TargetUnion::ModRevision(5))));
        assert!(!check(cmp(
            "a",
            "c",
            Value,
            Equal,
            TargetUnion::Value(b"1".to_vec())
        )));
        assert!(check(cmp(
            "b",
            "",
            Value,
            Greater,
            TargetUnion::Value(b"1".to_vec())
        )));
        // A target's value of another kind compares against 0.
        assert!(check(cmp("a", "", Version, Greater, TargetUnion::Lease(5))));
    }
}
