//! The command line's side of pipeline folders (`crate::diffusers`): the main job's options
//! turned into a folder job, each encoder run through the main job with its own model,
//! tokenizer and measured output, and `inspect` of a folder.

use std::io::Write;
use std::path::Path;

use anyhow::Result;

use crate::cli::Context;
use crate::diffusers::{self, EncoderJob, FolderJob, Pruned, Verdict};
use crate::error::SkrrError;
use crate::model_io::{check_output, write_file};
use crate::pipeline::{execute, render_run, RunArgs};

/// The main job on a pipeline folder.
pub fn run(args: &RunArgs, ctx: &Context) -> Result<()> {
    let (Some(input), Some(output)) = (args.input.as_deref(), args.output.as_deref()) else {
        return Err(SkrrError::Usage("usage: skrr-onnx IN OUT --sparsity S".into()).into());
    };
    let calib = &args.calib;
    let given = |flag: &str, set: bool| set.then(|| flag.to_string());
    let job = FolderJob {
        input: input.to_path_buf(),
        output: output.to_path_buf(),
        encoders: args.encoders.clone(),
        tokenizer: calib.tokenizer.clone(),
        measure: calib.measure.clone(),
        pre_tokenized: calib.calib.is_some(),
        one_encoder_options: [
            given("--calib", calib.calib.is_some()),
            given("--null-ids", calib.null_ids.is_some()),
            given("--pad-id", calib.pad_id.is_some()),
            given("--projection", calib.projection.is_some()),
            given("--plan-out", args.plan_out.is_some()),
        ]
        .into_iter()
        .flatten()
        .collect(),
        other_outputs: args.report.iter().chain(&args.plan_out).cloned().collect(),
    };
    if let Some(p) = &args.report {
        check_output(p)?;
    }
    let mut failed = Vec::new();
    let report = diffusers::run(&job, |e| {
        let (pruned, failure) = prune(args, ctx, e)?;
        failed.extend(failure.map(|m| format!("{}: {m}", e.name)));
        Ok(pruned)
    })?;
    if let Some(p) = &args.report {
        write_file(
            p,
            format!("{}\n", serde_json::to_string_pretty(&report)?).as_bytes(),
        )?;
    }
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        eprintln!("{}", report.verdict);
    } else {
        print!("{}", report.render());
        println!("{}", report.verdict);
    }
    match failed.is_empty() {
        true => Ok(()),
        false => Err(SkrrError::CheckFailed(failed.join("; ")).into()),
    }
}

/// One encoder through the main job: the folder's options, with the encoder's own model,
/// output, tokenizer and measured output; the folder writes the one report. Also returns the
/// failed checks when the fidelity check failed.
fn prune(args: &RunArgs, ctx: &Context, e: &EncoderJob) -> Result<(Pruned, Option<String>)> {
    let mut one = args.clone();
    one.input = Some(e.model.clone());
    one.output = Some(e.output.clone());
    one.encoders.clear();
    one.report = None;
    one.calib.tokenizer = e.tokenizer.clone();
    one.calib.measure = Some(e.measure.clone());
    let (report, checked) = execute(&one, ctx)?;
    let (verdict, failure) = match (&report.fidelity, checked) {
        (None, _) => (Verdict::Done, None),
        (Some(_), Ok(())) => (Verdict::Passed, None),
        (Some(_), Err(err)) => match err.downcast_ref::<SkrrError>() {
            Some(SkrrError::CheckFailed(m)) => (Verdict::Failed, Some(m.clone())),
            _ => return Err(err),
        },
    };
    let pruned = Pruned {
        report: serde_json::to_value(&report)?,
        text: format!("{}{}\n", render_run(&report), report.verdict),
        verdict,
        sparsity: report.plan.achieved_sparsity.unwrap_or(0.0),
        cosine: report.fidelity.as_ref().map(|f| f.cos_mean),
    };
    Ok((pruned, failure))
}

/// `inspect` of a pipeline folder: its text encoders.
pub fn inspect(folder: &Path, ctx: &Context) -> Result<()> {
    let pipeline = diffusers::Pipeline::read(folder)?;
    let text = match ctx.json {
        true => serde_json::to_string_pretty(&diffusers::Listing::from(&pipeline))? + "\n",
        false => diffusers::render_listing(&pipeline),
    };
    // A reader that stops early (`| head`) is not an error.
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}
