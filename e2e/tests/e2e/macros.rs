//! [`server_test!`]: one scenario, run against Cairn and against etcd.

/// Defines a module `$name` holding two tests that run the same scenario
/// with a different server under test: `$name::cairn` with Cairn and
/// `$name::etcd` with a real etcd 3.5. The etcd run checks the scenario
/// itself: if etcd fails it, the test is wrong, not Cairn.
///
/// `$scenario` is called with the [`Kind`](cairn_e2e::Kind) under test and
/// returns a future of `anyhow::Result<()>`: a scenario function
/// (`async fn(Kind) -> Result<()>`) or a closure. It is resolved inside the
/// new module, which imports its parent's items. Doc comments before the name
/// document the module.
///
/// A trailing `ignore_etcd` marks the etcd run `#[ignore]` (a harness
/// self-check, run with `--ignored`), for scenarios too slow or too heavy to
/// run twice on every test run.
///
/// Both tests run on a multi-threaded runtime with two workers.
///
/// ```ignore
/// server_test!(
///     /// A watch replays history, then switches to live events.
///     replay_then_live_no_gap_no_duplicate,
///     replay_then_live,
///     ignore_etcd
/// );
/// ```
macro_rules! server_test {
    ($(#[$meta:meta])* $name:ident, $scenario:expr $(,)?) => {
        server_test!(@emit $(#[$meta])* $name, $scenario, []);
    };
    ($(#[$meta:meta])* $name:ident, $scenario:expr, ignore_etcd $(,)?) => {
        server_test!(
            @emit $(#[$meta])* $name,
            $scenario,
            [#[ignore = "harness self-check; run with --ignored"]]
        );
    };
    (@emit $(#[$meta:meta])* $name:ident, $scenario:expr, [$(#[$etcd:meta])*]) => {
        $(#[$meta])*
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cairn() -> ::anyhow::Result<()> {
                ($scenario)(::cairn_e2e::Kind::Cairn).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$etcd])*
            async fn etcd() -> ::anyhow::Result<()> {
                ($scenario)(::cairn_e2e::Kind::Etcd).await
            }
        }
    };
}
