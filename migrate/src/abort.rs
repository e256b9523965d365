//! `cairn migrate abort`: gives the import up on the target and, with
//! `--from`, lifts the NOSPACE fence on the source.

use cairn_proto::migrate::Phase;

use crate::error::{Error, Result};
use crate::source::Source;
use crate::target::{phase_name, Target};

/// Aborts the import on `tgt`; with `src`, lifts every NOSPACE alarm. Returns the lines to print.
pub async fn run_abort(tgt: &Target, src: Option<&Source>) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    let state = tgt.state().await?;
    match Phase::try_from(state.phase) {
        Ok(Phase::Copying | Phase::Following) => {
            let st = tgt.abort().await?;
            lines.push(format!(
                "aborted the import on the target at {} (it was {} at revision {}); it now refuses writes until it is wiped",
                tgt.urls(),
                phase_name(state.phase),
                st.target_revision
            ));
        }
        Ok(Phase::Aborted) => lines.push(format!(
            "the import on the target at {} was already aborted",
            tgt.urls()
        )),
        Ok(Phase::CutOver) => {
            return Err(Error::BadInput(format!(
                "the target at {} is already cut over: there is no import to abort (the source keeps its fence; roll back through a snapshot)",
                tgt.urls()
            )))
        }
        _ => {
            return Err(Error::BadInput(format!(
                "the target at {} has no import to abort (phase {})",
                tgt.urls(),
                phase_name(state.phase)
            )))
        }
    }
    if let Some(src) = src {
        let lifted = src.unfence_all().await?;
        if lifted.is_empty() {
            lines.push(format!("no NOSPACE fence on the source at {}", src.urls()));
        }
        for m in lifted {
            lines.push(format!(
                "lifted the NOSPACE alarm (the fence) on source member {m:x}"
            ));
        }
    }
    Ok(lines)
}
