//! `baton up`: checks the flags and runs [`baton_runtime::up`].

use std::process::ExitCode;
use std::time::Duration;

use baton_model::parse_duration;
use baton_profilers::cpu::MAX_FREQUENCY_HZ;
use baton_profilers::ProfilerError;
use baton_runtime::up::UpOptions;

use crate::common::{default_data_dir, usage};
use crate::UpArgs;

pub fn run(a: UpArgs) -> anyhow::Result<ExitCode> {
    let window = match &a.window {
        Some(w) => {
            let d = parse_duration(w).map_err(|e| usage(format!("--window: {e}")))?;
            if d < Duration::from_secs(1) {
                return Err(usage("--window must be at least 1s"));
            }
            Some(d)
        }
        None => None,
    };
    if let Some(f) = a.frequency {
        if f == 0 || f > MAX_FREQUENCY_HZ {
            return Err(ProfilerError::BadFrequency(f).into());
        }
    }
    baton_runtime::up::run(UpOptions {
        listen: a.listen,
        data: a.data.unwrap_or_else(default_data_dir),
        frequency: a.frequency,
        config: a.config,
        window,
        cpu_clock: a.cpu_clock,
        dwarf: a.unwind == crate::UnwindMode::Auto,
        auth: a.auth,
        pods: crate::common::pods(a.kubelet.as_deref())?,
    })?;
    Ok(ExitCode::SUCCESS)
}
