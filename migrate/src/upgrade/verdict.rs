//! What one check concludes, and what the whole run exits with.

use std::fmt;

use serde::Serialize;

/// One check's conclusion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    /// Nothing stands in the way.
    Pass,
    /// Safe, with something the operator should know.
    Warn,
    /// Not measurable: the check could not tell.
    Unknown,
    /// Unsafe now.
    Fail,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "PASS",
            Verdict::Warn => "WARN",
            Verdict::Unknown => "UNKNOWN",
            Verdict::Fail => "FAIL",
        })
    }
}

/// One check's line of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The check's name (`quorum`, `leader`, ...).
    pub check: &'static str,
    /// Its conclusion.
    pub result: Verdict,
    /// One line saying why.
    pub reason: String,
}

impl Finding {
    /// A finding of `check`.
    pub fn new(check: &'static str, result: Verdict, reason: impl Into<String>) -> Finding {
        Finding {
            check,
            result,
            reason: reason.into(),
        }
    }
}

/// The process's exit code: 1 when any check fails (unsafe), else 2 when
/// any could not tell, else 0 (safe; warnings allowed).
pub fn exit_code(findings: &[Finding]) -> i32 {
    match findings.iter().map(|f| f.result).max() {
        Some(Verdict::Fail) => 1,
        Some(Verdict::Unknown) => 2,
        _ => 0,
    }
}

/// The findings as a table: check, result, reason.
pub fn table(findings: &[Finding]) -> String {
    let width = findings
        .iter()
        .map(|f| f.check.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut out = format!("{:<width$}  {:<7}  REASON\n", "CHECK", "RESULT");
    for f in findings {
        out.push_str(&format!(
            "{:<width$}  {:<7}  {}\n",
            f.check,
            f.result.to_string(),
            f.reason
        ));
    }
    out
}

/// The findings as JSON lines, one object per check.
pub fn json_lines(findings: &[Finding]) -> String {
    findings
        .iter()
        .map(|f| serde_json::to_string(f).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")))
        .map(|l| l + "\n")
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_fail_is_unsafe_and_unknown_is_could_not_tell() {
        let f = |v| Finding::new("x", v, "why");
        assert_eq!(exit_code(&[f(Verdict::Pass), f(Verdict::Warn)]), 0);
        assert_eq!(exit_code(&[f(Verdict::Pass), f(Verdict::Unknown)]), 2);
        assert_eq!(exit_code(&[f(Verdict::Unknown), f(Verdict::Fail)]), 1);
        assert_eq!(exit_code(&[]), 0);
        let line = json_lines(&[f(Verdict::Fail)]);
        assert_eq!(
            line,
            "{\"check\":\"x\",\"result\":\"FAIL\",\"reason\":\"why\"}\n"
        );
    }
}
