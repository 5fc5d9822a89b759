//! The main job on a pipeline folder: every refusal first (the folder, the encoders, their
//! tokenizers, the options, the destination), then the chosen encoders pruned one after the
//! other by the main job (`pipeline::run`) into a staged folder, then every other file carried
//! over, then one rename.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use super::stage::{check_destination, Carry, Stage};
use super::{Encoder, Measured, Pipeline, TokenizerFolder, Unreadable, MODEL_FILE};
use crate::error::SkrrError;
use crate::model_io::{check_output, write_file};
use crate::pipeline::{Job, RunReport};

pub use super::stage::Carried;

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    Passed,
    Failed,
    /// Written without a fidelity check (`--no-compare`).
    Done,
}

pub struct EncoderReport {
    pub name: String,
    pub class: Option<String>,
    pub tokenizer: Option<PathBuf>,
    pub measured: Measured,
    pub verdict: Verdict,
    /// The main job's report for this encoder. It names the staged folder, where the encoder
    /// was written: `relocated` gives its text with the destination's paths.
    pub report: RunReport,
    staged: String,
    output: String,
}

impl EncoderReport {
    /// `text` (a rendering of `report`) with the staged folder's paths replaced by the
    /// destination's.
    pub fn relocated(&self, text: &str) -> String {
        text.replace(&self.staged, &self.output)
    }
}

/// The JSON of an encoder: its choices, and the main job's report with the destination's paths.
impl Serialize for EncoderReport {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Json<'a> {
            name: &'a str,
            class: &'a Option<String>,
            tokenizer: &'a Option<PathBuf>,
            measured: &'a Measured,
            verdict: Verdict,
            report: serde_json::Value,
        }
        let mut report = serde_json::to_value(&self.report).map_err(serde::ser::Error::custom)?;
        relocate(&mut report, &self.staged, &self.output);
        Json {
            name: &self.name,
            class: &self.class,
            tokenizer: &self.tokenizer,
            measured: &self.measured,
            verdict: self.verdict,
            report,
        }
        .serialize(s)
    }
}

/// Everything a pipeline run did: `--report` writes it and `--json` prints it.
#[derive(Serialize)]
pub struct FolderReport {
    pub version: &'static str,
    pub input: PathBuf,
    pub output: PathBuf,
    /// model_index.json's `_class_name`.
    pub pipeline: String,
    /// Every text encoder of the pipeline.
    pub text_encoders: Vec<String>,
    /// The encoder was chosen as the largest (no `--encoder`).
    pub largest: bool,
    pub encoders: Vec<EncoderReport>,
    pub carried: Carried,
    pub seconds: f64,
    pub verdict: String,
}

impl FolderReport {
    /// `Ok` when every pruned encoder passed its fidelity check (or had none), else the typed
    /// error (exit status 1) naming each encoder's failed checks.
    pub fn checked(&self) -> Result<()> {
        let failed: Vec<String> = self
            .encoders
            .iter()
            .filter_map(|e| {
                let err = e.report.fidelity.as_ref()?.verdict().err()?;
                Some(format!("{}: {err}", e.name))
            })
            .collect();
        match failed.is_empty() {
            true => Ok(()),
            false => Err(SkrrError::CheckFailed(failed.join("; ")).into()),
        }
    }
}

/// Runs the main job on the pipeline folder `base.input`: `encoders` (or the largest) are
/// pruned by `pipeline::run` with `base`'s options and their own model, output, tokenizer and
/// measured output, and the new pipeline appears at `base.output` whole, or not at all. A
/// FAILED fidelity check is in the report ([`FolderReport::checked`]), not an error.
pub fn prune(base: &Job, encoders: &[String]) -> Result<FolderReport> {
    let start = Instant::now();
    let pipeline = Pipeline::read(&base.input)?;
    let chosen = pipeline.choose(encoders)?;
    check_one_encoder_options(base, &chosen)?;
    let destination = check_destination(&base.output)?;
    if let Some(p) = &base.report {
        check_output(p)?;
    }
    let input = base
        .input
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", base.input.display()))?;
    let others = base.report.iter().chain(&base.plan_out);
    for (path, what) in std::iter::once((&destination, "write the new pipeline beside it"))
        .chain(others.map(|p| (p, "its files could be replaced: write it elsewhere")))
    {
        let inside = match path.parent().map(|d| d.canonicalize()) {
            Some(Ok(dir)) => dir.join(path.file_name().unwrap_or_default()),
            _ => continue,
        };
        if inside.starts_with(&input) {
            return Err(SkrrError::Output {
                path: path.clone(),
                msg: format!(
                    "is inside the input pipeline folder {}: {what}",
                    base.input.display()
                ),
            }
            .into());
        }
    }
    let mut planned = Vec::new();
    for e in &chosen {
        let tokenizer = tokenizer_for(base, e)?;
        let measured = match &base.calib.measure {
            Some(m) => Measured {
                output: m.clone(),
                reason: "--measure".into(),
                warning: None,
            },
            None => e.measured.clone(),
        };
        if let Some(w) = &measured.warning {
            log::warn!("{}: {w}", e.name);
        }
        planned.push((*e, tokenizer, measured));
    }

    let stage = Stage::new(&base.output)?;
    let staged = stage.path().display().to_string();
    // Written as given, without a trailing slash.
    let output = base
        .output
        .components()
        .collect::<PathBuf>()
        .display()
        .to_string();
    let dirs = mirror_folders(&base.input, stage.path())?;
    let mut reports = Vec::new();
    for (e, tokenizer, measured) in planned {
        log::info!(
            "pruning {} of {}, measured on {}",
            e.name,
            pipeline.class,
            measured.output
        );
        let mut job = base.clone();
        job.input = e.model.clone();
        job.output = stage.path().join(&e.name).join(MODEL_FILE);
        job.report = None;
        job.calib.tokenizer = tokenizer.clone();
        job.calib.measure = Some(measured.output.clone());
        let report =
            crate::pipeline::run(&job).with_context(|| format!("text encoder {}", e.name))?;
        let verdict = match &report.fidelity {
            None => Verdict::Done,
            Some(f) if f.passed => Verdict::Passed,
            Some(_) => Verdict::Failed,
        };
        reports.push(EncoderReport {
            name: e.name.clone(),
            class: e.class.clone(),
            tokenizer,
            measured,
            verdict,
            report,
            staged: staged.clone(),
            output: output.clone(),
        });
    }
    let carried = carry_the_rest(&pipeline, &chosen, &dirs, &stage)?;
    stage.commit()?;

    let seconds = start.elapsed().as_secs_f64();
    let verdict = verdict_line(&pipeline.class, &reports, &carried, &output, seconds);
    let report = FolderReport {
        version: env!("CARGO_PKG_VERSION"),
        input: base.input.clone(),
        output: base.output.clone(),
        text_encoders: pipeline.encoders.iter().map(|e| e.name.clone()).collect(),
        pipeline: pipeline.class,
        largest: encoders.is_empty(),
        encoders: reports,
        carried,
        seconds,
        verdict,
    };
    if let Some(p) = &base.report {
        write_file(
            p,
            format!("{}\n", serde_json::to_string_pretty(&report)?).as_bytes(),
        )?;
    }
    Ok(report)
}

/// Options that name one encoder's tokens, tokenizer, output or plan cannot hold for two.
fn check_one_encoder_options(base: &Job, chosen: &[&Encoder]) -> Result<()> {
    if chosen.len() < 2 {
        return Ok(());
    }
    let c = &base.calib;
    let given: Vec<&str> = [
        ("--tokenizer", c.tokenizer.is_some()),
        ("--measure", c.measure.is_some()),
        ("--calib", c.calib.is_some()),
        ("--null-ids", c.null_ids.is_some()),
        ("--pad-id", c.pad_id.is_some()),
        ("--projection", c.projection.is_some()),
        ("--plan-out", base.plan_out.is_some()),
    ]
    .into_iter()
    .filter_map(|(flag, set)| set.then_some(flag))
    .collect();
    if given.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = chosen.iter().map(|e| e.name.as_str()).collect();
    Err(SkrrError::Usage(format!(
        "{} {} one encoder, and this run prunes {} ({}): choose one with --encoder, or leave \
         the option out",
        given.join(", "),
        if given.len() == 1 {
            "applies to"
        } else {
            "apply to"
        },
        names.len(),
        names.join(", ")
    ))
    .into())
}

/// The tokenizer.json the encoder's prompts are tokenized with: `--tokenizer`, else its
/// tokenizer folder's. A folder without one is refused before any work, with the ways out,
/// unless token ids are given (`--calib`: the main job then needs a tokenizer only for the
/// null input, and says so).
fn tokenizer_for(base: &Job, e: &Encoder) -> Result<Option<PathBuf>> {
    if let Some(t) = &base.calib.tokenizer {
        return Ok(Some(t.clone()));
    }
    let (folder, what) = match &e.tokenizer {
        TokenizerFolder::Found { file } => return Ok(Some(file.clone())),
        _ if base.calib.calib.is_some() => return Ok(None),
        TokenizerFolder::SlowOnly { folder } => (
            folder,
            "has no tokenizer.json (a slow tokenizer's files only)",
        ),
        TokenizerFolder::Missing { folder } => (folder, "does not exist"),
    };
    let f = folder.display();
    Err(SkrrError::BadInput(format!(
        "{}: its tokenizer folder {f} {what}: write one with `python -c \"from transformers \
         import AutoTokenizer as T; T.from_pretrained('{f}').save_pretrained('{f}')\"`, give one \
         with --encoder {} --tokenizer FILE, or token ids with --calib (docs/usage.md, \
         \"Calibration prompts and tokenizers\")",
        e.name, e.name
    ))
    .into())
}

/// The input's folders, recreated in the stage (an encoder's folder must exist before its
/// main job writes into it); returns them relative to the input, parents first. A folder
/// reached twice through symbolic links is kept once.
fn mirror_folders(input: &Path, stage: &Path) -> Result<Vec<PathBuf>> {
    let mut seen = HashSet::new();
    let mut queue = vec![PathBuf::new()];
    let mut kept = Vec::new();
    let mut i = 0;
    while i < queue.len() {
        let rel = queue[i].clone();
        i += 1;
        let here = input.join(&rel);
        let meta = std::fs::metadata(&here)?;
        if !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        if !rel.as_os_str().is_empty() {
            std::fs::create_dir(stage.join(&rel)).map_err(|e| SkrrError::Output {
                path: stage.join(&rel),
                msg: format!("cannot create the folder: {e}"),
            })?;
        }
        let mut subdirs: Vec<PathBuf> = Vec::new();
        for entry in
            std::fs::read_dir(&here).with_context(|| format!("cannot list {}", here.display()))?
        {
            let entry = entry?;
            if std::fs::metadata(entry.path()).is_ok_and(|m| m.is_dir()) {
                subdirs.push(rel.join(entry.file_name()));
            }
        }
        subdirs.sort();
        queue.extend(subdirs);
        kept.push(rel);
    }
    Ok(kept)
}

/// Every regular file of the input that is not a pruned encoder's model or data, linked (or
/// copied) into the stage. The external data of the text encoders left as they are is copied:
/// skrr-onnx (reading the input or the output later) refuses a data file with several links.
/// (An encoder that cannot be read has no known data files: its folder is linked.)
fn carry_the_rest(
    pipeline: &Pipeline,
    chosen: &[&Encoder],
    dirs: &[PathBuf],
    stage: &Stage,
) -> Result<Carried> {
    let id = |p: &Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
    let replaced: HashSet<_> = chosen
        .iter()
        .flat_map(|e| e.files.iter())
        .filter_map(|p| id(p))
        .collect();
    let copied: HashSet<_> = pipeline
        .encoders
        .iter()
        .filter(|e| !chosen.iter().any(|c| c.name == e.name))
        .flat_map(|e| e.files.iter().skip(1))
        .filter_map(|p| id(p))
        .collect();
    let mut carried = Carried::default();
    for rel in dirs {
        let here = pipeline.folder.join(rel);
        let mut entries: Vec<_> = std::fs::read_dir(&here)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let Ok(meta) = std::fs::metadata(&path) else {
                log::warn!("{} is a broken link: not carried over", path.display());
                continue;
            };
            if meta.is_dir() {
                continue;
            }
            let key = (meta.dev(), meta.ino());
            if !meta.is_file() {
                log::warn!("{} is not a regular file: not carried over", path.display());
                continue;
            }
            if replaced.contains(&key) {
                continue;
            }
            let to = rel.join(entry.file_name());
            let how = match copied.contains(&key) {
                true => Carry::Copy,
                false => Carry::Link,
            };
            stage.carry(&path, &to, how, &mut carried)?;
        }
    }
    log::info!(
        "carried {} files: {} linked, {} copied",
        carried.files,
        carried.linked,
        carried.copied
    );
    Ok(carried)
}

/// Replaces `from` by `to` in every string of a report.
fn relocate(v: &mut serde_json::Value, from: &str, to: &str) {
    match v {
        serde_json::Value::String(s) if s.contains(from) => *s = s.replace(from, to),
        serde_json::Value::Array(a) => a.iter_mut().for_each(|v| relocate(v, from, to)),
        serde_json::Value::Object(o) => o.values_mut().for_each(|v| relocate(v, from, to)),
        _ => {}
    }
}

fn verdict_line(
    class: &str,
    encoders: &[EncoderReport],
    carried: &Carried,
    output: &str,
    seconds: f64,
) -> String {
    let head = if encoders.iter().any(|e| e.verdict == Verdict::Failed) {
        "FAILED"
    } else if encoders.iter().all(|e| e.verdict == Verdict::Done) {
        "DONE"
    } else {
        "PASSED"
    };
    let each: Vec<String> = encoders
        .iter()
        .map(|e| {
            let cos = e.report.fidelity.as_ref().map_or(String::new(), |f| {
                format!(", held-out cosine {:.4}", f.cos_mean)
            });
            let failed = match e.verdict {
                Verdict::Failed => " (FAILED)",
                _ => "",
            };
            format!(
                "{} {:.1}% of parameters removed{cos}{failed}",
                e.name,
                100.0 * e.report.plan.achieved_sparsity.unwrap_or(0.0)
            )
        })
        .collect();
    format!(
        "{head}: {}; wrote pipeline {output} ({class}; {} other files carried over: {} \
         hard-linked, {} copied) in {seconds:.1} s",
        each.join("; "),
        carried.files,
        carried.linked,
        carried.copied
    )
}

/// `inspect` of a pipeline folder: its text encoders, what the main job would measure on each,
/// and which it prunes by default.
#[derive(Debug, Serialize)]
pub struct Listing<'a> {
    pub folder: &'a Path,
    pub pipeline: &'a str,
    pub default_encoder: &'a str,
    pub encoders: &'a [Encoder],
    pub without_model: &'a [String],
    pub unreadable: &'a [Unreadable],
}

impl<'a> From<&'a Pipeline> for Listing<'a> {
    fn from(p: &'a Pipeline) -> Self {
        Listing {
            folder: &p.folder,
            pipeline: &p.class,
            default_encoder: &p.default_encoder().name,
            encoders: &p.encoders,
            without_model: &p.without_model,
            unreadable: &p.unreadable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_relocated_from_the_stage_to_the_destination() {
        let mut v = serde_json::json!({
            "output": "/w/.out.Ab12.tmp/text_encoder_3/model.onnx",
            "fidelity": {"pruned": ["/w/.out.Ab12.tmp/text_encoder_3/model.onnx", 3]},
            "verdict": "PASSED: …; wrote /w/.out.Ab12.tmp/text_encoder_3/model.onnx (0.60 MB)",
            "input": "/w/sd3/text_encoder_3/model.onnx",
        });
        relocate(&mut v, "/w/.out.Ab12.tmp", "out");
        assert_eq!(v["output"], "out/text_encoder_3/model.onnx");
        assert_eq!(v["fidelity"]["pruned"][0], "out/text_encoder_3/model.onnx");
        assert_eq!(
            v["verdict"],
            "PASSED: …; wrote out/text_encoder_3/model.onnx (0.60 MB)"
        );
        assert_eq!(v["input"], "/w/sd3/text_encoder_3/model.onnx");
    }
}
