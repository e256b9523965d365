//! What `cairn migrate start` shows while it runs: an indicatif progress bar
//! on a terminal (keys and bytes copied, rate, ETA; then the lag behind the
//! source), or, with no terminal, the same figures as structured log lines
//! every few seconds.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bar being drawn, so that log lines are written around it.
static ACTIVE_BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// The bar while copying.
const COPY_TEMPLATE: &str = "{prefix} {bar:20} {human_pos}/{human_len} keys, {msg}, ETA {eta}";
/// The line while following.
const FOLLOW_TEMPLATE: &str = "{spinner} {prefix} {msg}";

/// How often log lines report progress when there is no terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Writes to stderr, around the progress bar if one is drawn (give
/// `log_writer` to the tracing subscriber).
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = ACTIVE_BAR.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// A writer for the tracing subscriber of `cairn migrate`.
pub fn log_writer() -> LogWriter {
    LogWriter
}

/// Progress of one `cairn migrate start`.
pub struct Progress {
    bar: Option<ProgressBar>,
    last_log: Instant,
    copy_started: Option<(Instant, i64, i64)>,
    quiet: bool,
    follow_style: bool,
}

impl Progress {
    /// A bar when stderr is a terminal, log lines otherwise.
    pub fn new() -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden()).with_style(
                ProgressStyle::with_template(COPY_TEMPLATE)
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            *ACTIVE_BAR.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar.clone());
            bar
        });
        Progress {
            bar,
            last_log: Instant::now() - LOG_EVERY,
            copy_started: None,
            quiet: false,
            follow_style: false,
        }
    }

    /// The copy is at `keys` of `total` keys and `bytes` bytes.
    pub fn copying(&mut self, start_revision: i64, keys: i64, bytes: i64, total: i64) {
        let (t0, k0, b0) = *self
            .copy_started
            .get_or_insert((Instant::now(), keys, bytes));
        let secs = t0.elapsed().as_secs_f64().max(0.001);
        let rate = (keys - k0) as f64 / secs;
        let byte_rate = (bytes - b0) as f64 / secs;
        if let Some(bar) = &self.bar {
            bar.set_length(total.max(keys).max(0) as u64);
            bar.set_prefix(format!("copy@{start_revision}"));
            bar.set_position(keys.max(0) as u64);
            bar.set_message(format!(
                "{}, {} keys/s",
                HumanBytes(bytes.max(0) as u64),
                rate.round() as i64
            ));
            if bar.is_hidden() {
                bar.set_draw_target(ProgressDrawTarget::stderr());
            }
        } else if !self.quiet && self.last_log.elapsed() >= LOG_EVERY {
            self.last_log = Instant::now();
            let eta_secs = if rate > 0.0 {
                ((total - keys).max(0) as f64 / rate).round() as i64
            } else {
                -1
            };
            tracing::info!(
                phase = "copying",
                start_revision,
                keys_copied = keys,
                keys_total = total,
                bytes_copied = bytes,
                keys_per_sec = rate.round() as i64,
                bytes_per_sec = byte_rate.round() as i64,
                eta_secs,
                "copy progress"
            );
        }
    }

    /// Following: the target at `target_revision`, the source at `source_revision`.
    pub fn following(&mut self, target_revision: i64, source_revision: i64, lag: Duration) {
        let lag_revisions = (source_revision - target_revision).max(0);
        if let Some(bar) = &self.bar {
            if !self.follow_style {
                self.follow_style = true;
                bar.set_style(
                    ProgressStyle::with_template(FOLLOW_TEMPLATE)
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.unset_length();
                bar.set_prefix("following:");
                if bar.is_hidden() {
                    bar.set_draw_target(ProgressDrawTarget::stderr());
                }
                bar.enable_steady_tick(Duration::from_millis(200));
            }
            bar.set_message(format!(
                "target {target_revision}, source {source_revision}, lag {lag_revisions} rev {:.1}s",
                lag.as_secs_f64()
            ));
        } else if !self.quiet && self.last_log.elapsed() >= LOG_EVERY {
            self.last_log = Instant::now();
            tracing::info!(
                phase = "following",
                target_revision,
                source_revision,
                lag_revisions,
                lag_secs = lag.as_secs_f64(),
                "follow progress"
            );
        }
    }

    /// No bar and no log lines (a cutover's own catch-up import).
    pub fn hidden() -> Progress {
        Progress {
            bar: None,
            last_log: Instant::now(),
            copy_started: None,
            quiet: true,
            follow_style: false,
        }
    }

    /// Removes the bar.
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
            *ACTIVE_BAR.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse() {
        assert!(ProgressStyle::with_template(COPY_TEMPLATE).is_ok());
        assert!(ProgressStyle::with_template(FOLLOW_TEMPLATE).is_ok());
    }
}
