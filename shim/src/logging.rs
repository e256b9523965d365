//! The server's log, set up from etcd's logging flags (`--logger`,
//! `--log-outputs`, `--log-level`, `--log-format`).
//!
//! etcd writes one JSON object per line (zap's `level`, `ts`, `caller`,
//! `msg`, then the fields) and log collectors in Kubernetes clusters parse
//! exactly that, so Cairn writes the same keys. On a terminal the default is
//! readable text instead. openraft's own INFO lines (multi-kilobyte state
//! dumps at every start) are debug detail: at info and above they are
//! filtered out, and Cairn logs what an operator needs from Raft itself
//! (`cairn_raft_backend::replication::raft_events`).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::{Context as LayerContext, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// `--log-format`: etcd's two, plus the default that picks by destination.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Console,
}

/// The logging flags, as `ServeArgs` holds them.
#[derive(clap::Args, Debug, Clone)]
pub struct LogArgs {
    /// Logger: only etcd's `zap` (structured logging) is accepted.
    #[arg(long, default_value = "zap")]
    pub logger: String,

    /// Where the log goes: `default` or `stderr`, `stdout`, or file paths,
    /// comma-separated (every line goes to each). `journal` writes to stderr,
    /// which systemd puts in the journal.
    #[arg(long, default_value = "default", value_delimiter = ',')]
    pub log_outputs: Vec<String>,

    /// Log level: etcd's debug, info, warn, error, panic or fatal (the last
    /// two log errors only), or a tracing filter such as `info,cairn_shim=debug`.
    #[arg(long, default_value = "info", env = "CAIRN_LOG")]
    pub log_level: String,

    /// json (etcd's zap lines) or console (text); by default json unless
    /// every output is a terminal.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

/// Crates whose INFO lines are internal state, not operator news. Shown from
/// `--log-level debug` on.
const QUIET_AT_INFO: &[&str] = &["openraft"];
/// Crates whose DEBUG lines are per-frame transport detail; shown only when
/// named in a filter.
const QUIET_AT_DEBUG: &[&str] = &["h2", "hyper", "hyper_util", "tower", "rustls"];

/// etcd's (zap's) level names as tracing's; `None` for a tracing filter.
fn etcd_level(level: &str) -> Option<&'static str> {
    match level.trim().to_ascii_lowercase().as_str() {
        "debug" => Some("debug"),
        "info" => Some("info"),
        "warn" | "warning" => Some("warn"),
        "error" | "dpanic" | "panic" | "fatal" => Some("error"),
        "trace" => Some("trace"),
        _ => None,
    }
}

/// The tracing filter for `--log-level`.
pub fn filter(level: &str) -> anyhow::Result<EnvFilter> {
    let bare = etcd_level(level);
    let directives = match bare {
        Some(l @ ("info" | "warn" | "error")) => {
            let mut d = l.to_string();
            for c in QUIET_AT_INFO.iter().chain(QUIET_AT_DEBUG) {
                d.push_str(&format!(",{c}=warn"));
            }
            d
        }
        Some(l @ "debug") => {
            let mut d = l.to_string();
            for c in QUIET_AT_DEBUG {
                d.push_str(&format!(",{c}=info"));
            }
            d
        }
        Some(l) => l.to_string(),
        None => level.to_string(),
    };
    EnvFilter::try_new(&directives).with_context(|| {
        format!("invalid --log-level {level:?}: use debug, info, warn, error, panic, fatal, or a tracing filter")
    })
}

/// One place a log line goes.
enum Output {
    Stderr,
    Stdout,
    File(Mutex<File>),
}

/// Every output named by `--log-outputs`; a line is written to each.
#[derive(Clone)]
pub struct Outputs(Arc<Vec<Output>>);

impl Outputs {
    pub fn open(names: &[String]) -> anyhow::Result<Outputs> {
        let mut outputs = Vec::new();
        for name in names {
            let out = match name.as_str() {
                "default" | "stderr" | "journal" | "" => Output::Stderr,
                "stdout" => Output::Stdout,
                path => {
                    let path = PathBuf::from(path);
                    let file = OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .with_context(|| {
                            format!("--log-outputs: cannot open {}", path.display())
                        })?;
                    Output::File(Mutex::new(file))
                }
            };
            outputs.push(out);
        }
        if outputs.is_empty() {
            bail!("--log-outputs names no output");
        }
        Ok(Outputs(Arc::new(outputs)))
    }

    /// True when a person reads every output (then text is the default).
    fn all_terminals(&self) -> bool {
        self.0.iter().all(|o| match o {
            Output::Stderr => io::stderr().is_terminal(),
            Output::Stdout => io::stdout().is_terminal(),
            Output::File(_) => false,
        })
    }
}

impl Write for Outputs {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for out in self.0.iter() {
            match out {
                Output::Stderr => io::stderr().write_all(buf)?,
                Output::Stdout => io::stdout().write_all(buf)?,
                Output::File(f) => f.lock().unwrap_or_else(|p| p.into_inner()).write_all(buf)?,
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Outputs {
    type Writer = Outputs;
    fn make_writer(&'a self) -> Outputs {
        self.clone()
    }
}

/// Installs the server's log as the flags say.
pub fn init(args: &LogArgs) -> anyhow::Result<()> {
    if args.logger != "zap" {
        bail!(
            "invalid --logger {:?}: Cairn, as etcd 3.6, supports only 'zap'",
            args.logger
        );
    }
    let filter = filter(&args.log_level)?;
    let outputs = Outputs::open(&args.log_outputs)?;
    let format = args.log_format.unwrap_or(if outputs.all_terminals() {
        LogFormat::Console
    } else {
        LogFormat::Json
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let stale = StaleMessageNotice {
        show: !matches!(etcd_level(&args.log_level), Some("info" | "warn" | "error")),
    };
    let result = match format {
        LogFormat::Json => builder
            .event_format(ZapJson)
            .with_writer(outputs)
            .finish()
            .with(stale)
            .try_init(),
        LogFormat::Console => builder
            .with_ansi(outputs.all_terminals())
            .with_writer(outputs)
            .finish()
            .with(stale)
            .try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("set up the log: {e}"))
}

/// openraft warns when it drops a message sent under a vote the member no
/// longer holds ("A message will be ignored because ... vote changed"),
/// which by its own account is a stale message to ignore: at a one-member
/// start, the notice that its first vote was saved arrives after it has
/// voted again. Not operator news, so shown only from `--log-level debug`
/// on (or a tracing filter), like openraft's INFO lines.
struct StaleMessageNotice {
    show: bool,
}

const STALE_MESSAGE: &str = "A message will be ignored because";

impl<S: Subscriber> Layer<S> for StaleMessageNotice {
    fn event_enabled(&self, event: &Event<'_>, _: LayerContext<'_, S>) -> bool {
        let meta = event.metadata();
        if self.show || *meta.level() != Level::WARN || !meta.target().starts_with("openraft") {
            return true;
        }
        let mut message = MessagePrefix(false);
        event.record(&mut message);
        !message.0
    }
}

/// Whether an event's message starts with [`STALE_MESSAGE`].
struct MessagePrefix(bool);

impl Visit for MessagePrefix {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}").starts_with(STALE_MESSAGE);
        }
    }
}

/// zap's JSON line: `{"level","ts","caller","msg", fields...}`.
pub struct ZapJson;

impl<S, N> FormatEvent<S, N> for ZapJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = JsonFields::default();
        event.record(&mut fields);
        let caller = match (meta.file(), meta.line()) {
            (Some(f), Some(l)) => format!("{f}:{l}"),
            _ => meta.target().to_string(),
        };
        let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        write!(
            writer,
            "{{\"level\":{},\"ts\":{},\"caller\":{},\"msg\":{}",
            json_str(zap_level(meta.level())),
            json_str(&ts),
            json_str(&caller),
            json_str(&fields.message)
        )?;
        // The names of the spans the event is in (the request it serves).
        if let Some(scope) = ctx.event_scope() {
            let names: Vec<&str> = scope.from_root().map(|s| s.name()).collect();
            if !names.is_empty() {
                write!(writer, ",\"span\":{}", json_str(&names.join(":")))?;
            }
        }
        for (k, v) in &fields.rest {
            write!(writer, ",{}:{}", json_str(k), v)?;
        }
        writeln!(writer, "}}")
    }
}

fn zap_level(l: &Level) -> &'static str {
    match *l {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "debug",
    }
}

fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// An event's fields: the message, and the rest as JSON values in order.
#[derive(Default)]
struct JsonFields {
    message: String,
    rest: Vec<(String, String)>,
}

impl JsonFields {
    fn push(&mut self, field: &Field, value: serde_json::Value) {
        if field.name() == "message" {
            self.message = match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
        } else {
            self.rest
                .push((field.name().to_string(), value.to_string()));
        }
    }
}

impl Visit for JsonFields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.push(field, serde_json::Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, serde_json::Value::String(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.push(field, serde_json::Value::String(value.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_levels_map_to_filters() {
        for l in ["debug", "info", "warn", "error", "panic", "fatal", "INFO"] {
            assert!(filter(l).is_ok(), "{l}");
        }
        assert!(filter("info,cairn_shim=debug").is_ok());
        let err = filter("cairn_shim=loudest")
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--log-level"), "{err}");
    }

    #[test]
    fn info_hides_openraft_info_and_debug_shows_it() {
        let info = filter("info").map(|f| f.to_string()).unwrap_or_default();
        assert!(info.contains("openraft=warn"), "{info}");
        let debug = filter("debug").map(|f| f.to_string()).unwrap_or_default();
        assert!(!debug.contains("openraft"), "{debug}");
    }

    /// openraft's stale-message warning is hidden at info and shown at
    /// debug; its other warnings, and other crates' with the same words,
    /// are not touched.
    #[test]
    fn openrafts_stale_message_warning_is_shown_only_at_debug() {
        let lines_at = |show: bool| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("log.json");
            let outputs = Outputs::open(&[path.display().to_string()]).unwrap();
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter(filter("info").unwrap())
                .event_format(ZapJson)
                .with_writer(outputs)
                .finish()
                .with(StaleMessageNotice { show });
            tracing::subscriber::with_default(subscriber, || {
                tracing::warn!(
                    target: "openraft::core::raft_core",
                    "A message will be ignored because Leader vote changed: msg sent by vote: T0"
                );
                tracing::warn!(target: "openraft::core::raft_core", "replication failed");
                tracing::warn!("A message will be ignored because of a test");
            });
            std::fs::read_to_string(&path).unwrap()
        };
        let info = lines_at(false);
        assert_eq!(info.lines().count(), 2, "{info}");
        assert!(!info.contains("vote changed"), "{info}");
        assert_eq!(lines_at(true).lines().count(), 3);
    }

    #[test]
    fn zap_json_lines_parse_with_etcds_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.json");
        let outputs = Outputs::open(&[path.display().to_string()]).unwrap();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter("info").unwrap())
            .event_format(ZapJson)
            .with_writer(outputs)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("range");
            let _g = span.enter();
            tracing::info!(
                revision = 7i64,
                key = "a\"b",
                ok = true,
                "served \"quoted\""
            );
            tracing::warn!(error = %io::Error::other("disk"), "failed");
            tracing::info!(target: "openraft::engine", "hidden at info");
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["level"], "info");
        assert_eq!(lines[0]["msg"], "served \"quoted\"");
        assert_eq!(lines[0]["revision"], 7);
        assert_eq!(lines[0]["key"], "a\"b");
        assert_eq!(lines[0]["ok"], true);
        assert_eq!(lines[0]["span"], "range");
        assert!(lines[0]["ts"].as_str().unwrap().ends_with('Z'));
        assert!(lines[0]["caller"].as_str().unwrap().contains("logging.rs"));
        assert_eq!(lines[1]["level"], "warn");
        assert_eq!(lines[1]["error"], "disk");
    }
}
