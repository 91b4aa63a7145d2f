//! SVG flame graphs, rendered by `inferno` from collapsed stacks.

use std::io::Write;

use crate::export::{collapsed, ExportError};
use crate::profile::Profile;

pub fn write(profile: &Profile, out: &mut dyn Write) -> Result<(), ExportError> {
    let lines = collapsed::lines(profile);
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = match &profile.event {
        Some(e) => format!("Baton CPU profile ({e})"),
        None => "Baton profile".to_string(),
    };
    opts.count_name = if profile.period_ns.is_some() {
        "samples".into()
    } else {
        profile.value_type.unit.clone()
    };
    if lines.is_empty() {
        // inferno refuses empty input; an empty profile is still a valid (empty) picture.
        writeln!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="600" height="40"><text x="10" y="25">No samples</text></svg>"#
        )?;
        return Ok(());
    }
    inferno::flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), out)
        .map_err(|e| ExportError::Svg(e.to_string()))
}
