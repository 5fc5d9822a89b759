//! One look for every progress bar: on stderr, hidden when stderr is not a terminal (indicatif
//! does that), so logs of pipeline runs stay clean.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar of `len` steps counted in `unit`, labelled `what`.
pub fn bar(len: u64, what: &str, unit: &str) -> ProgressBar {
    styled(len, what, &format!("{{pos}}/{{len}} {unit}"))
}

/// A bar of bytes, labelled `what`; its total grows as the work is found (`inc_length`).
pub fn bytes(what: &str) -> ProgressBar {
    styled(0, what, "{bytes}/{total_bytes}")
}

fn styled(len: u64, what: &str, count: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let template = format!("{{msg:>14}} [{{bar:30}}] {count} {{elapsed}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}
