//! The main job on a pipeline folder: every refusal first (the folder, the encoders, their
//! tokenizers, the destination), then the chosen encoders pruned one after the other by the
//! caller's main job into a staged folder, then every other file carried over, then one rename.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use super::stage::{check_destination, Carry, Stage};
use super::{Encoder, Measured, Pipeline, TokenizerFolder, MODEL_FILE};
use crate::error::SkrrError;

pub use super::stage::Carried;

/// The main job's options that concern the folder, as the caller's command line gave them.
#[derive(Debug, Clone, Default)]
pub struct FolderJob {
    pub input: PathBuf,
    pub output: PathBuf,
    /// Encoders to prune, in order (`--encoder`, repeatable); empty: the largest.
    pub encoders: Vec<String>,
    /// A tokenizer.json to use instead of the tokenizer folder's (one encoder only).
    pub tokenizer: Option<PathBuf>,
    /// The output to measure instead of the one the pipeline reads (one encoder only).
    pub measure: Option<String>,
    /// Token ids are given (`--calib`): a tokenizer folder without tokenizer.json is then for
    /// the main job to judge (it needs one only for the null input).
    pub pre_tokenized: bool,
    /// Other options given that belong to one encoder (token ids, its projection, one plan
    /// file), named as the user wrote them: refused when several encoders are pruned.
    pub one_encoder_options: Vec<String>,
    /// Other files the run writes (report, plan): not inside the input folder, where they
    /// would replace one of its files.
    pub other_outputs: Vec<PathBuf>,
}

/// One encoder's main job: the caller runs it with its own options and these replaced.
#[derive(Debug, Clone)]
pub struct EncoderJob {
    pub name: String,
    pub model: PathBuf,
    /// Inside the staged folder.
    pub output: PathBuf,
    pub tokenizer: Option<PathBuf>,
    pub measure: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    Passed,
    Failed,
    /// Written without a fidelity check (`--no-compare`).
    Done,
}

/// What the caller's main job returns for one encoder.
#[derive(Debug)]
pub struct Pruned {
    /// Its report, as `--json` prints it for a model file.
    pub report: serde_json::Value,
    /// Its text report, verdict line included.
    pub text: String,
    pub verdict: Verdict,
    /// Parameters removed / all parameters.
    pub sparsity: f64,
    /// Mean held-out token cosine, when compared.
    pub cosine: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct EncoderReport {
    pub name: String,
    pub class: Option<String>,
    pub tokenizer: Option<PathBuf>,
    pub measured: Measured,
    pub verdict: Verdict,
    /// The main job's report for this encoder.
    pub report: serde_json::Value,
    #[serde(skip)]
    text: String,
    #[serde(skip)]
    sparsity: f64,
    #[serde(skip)]
    cosine: Option<f64>,
}

/// Everything a pipeline run did: `--report` writes it and `--json` prints it.
#[derive(Debug, Serialize)]
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
    /// The text report: one block per encoder (what was chosen for it, then the main job's
    /// report and verdict line), then what was carried over. The folder's verdict line is
    /// `verdict`.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let pruned: Vec<&str> = self.encoders.iter().map(|e| e.name.as_str()).collect();
        let _ = writeln!(
            s,
            "pipeline {} ({}): text encoders {}; pruning {}{}",
            self.input.display(),
            self.pipeline,
            self.text_encoders.join(", "),
            pruned.join(", "),
            if self.largest { " (the largest)" } else { "" }
        );
        for e in &self.encoders {
            let _ = writeln!(
                s,
                "\nencoder {}{}: tokenizer {}, measured {} ({})",
                e.name,
                e.class
                    .as_deref()
                    .map_or(String::new(), |c| format!(" ({c})")),
                e.tokenizer
                    .as_deref()
                    .map_or("none".into(), |t| t.display().to_string()),
                e.measured.output,
                e.measured.reason
            );
            if let Some(w) = &e.measured.warning {
                let _ = writeln!(s, "warning {w}");
            }
            s.push_str(&e.text);
        }
        let c = &self.carried;
        let _ = writeln!(
            s,
            "\ncarried {} other files ({:.2} MB): {} hard-linked, {} copied",
            c.files,
            c.bytes as f64 / 1e6,
            c.linked,
            c.copied
        );
        s
    }
}

/// Runs the main job on a pipeline folder: `prune` runs one encoder's main job (called once
/// per chosen encoder, in order) and the folder appears at `job.output` whole, or not at all.
pub fn run(
    job: &FolderJob,
    mut prune: impl FnMut(&EncoderJob) -> Result<Pruned>,
) -> Result<FolderReport> {
    let start = Instant::now();
    let pipeline = Pipeline::read(&job.input)?;
    let chosen = pipeline.choose(&job.encoders)?;
    check_one_encoder_options(job, &chosen)?;
    let destination = check_destination(&job.output)?;
    let input = job
        .input
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", job.input.display()))?;
    for (path, what) in std::iter::once((&destination, "write the new pipeline beside it")).chain(
        job.other_outputs
            .iter()
            .map(|p| (p, "its files could be replaced: write it elsewhere")),
    ) {
        let inside = match path.parent().map(|d| d.canonicalize()) {
            Some(Ok(dir)) => dir.join(path.file_name().unwrap_or_default()),
            _ => continue,
        };
        if inside.starts_with(&input) {
            return Err(SkrrError::Output {
                path: path.clone(),
                msg: format!(
                    "is inside the input pipeline folder {}: {what}",
                    job.input.display()
                ),
            }
            .into());
        }
    }
    let mut planned = Vec::new();
    for e in &chosen {
        let tokenizer = tokenizer_for(job, e)?;
        let measured = match &job.measure {
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

    let stage = Stage::new(&job.output)?;
    let dirs = mirror_folders(&job.input, stage.path())?;
    let mut encoders = Vec::new();
    for (e, tokenizer, measured) in planned {
        log::info!(
            "pruning {} of {}, measured on {}",
            e.name,
            pipeline.class,
            measured.output
        );
        let pruned = prune(&EncoderJob {
            name: e.name.clone(),
            model: e.model.clone(),
            output: stage.path().join(&e.name).join(MODEL_FILE),
            tokenizer: tokenizer.clone(),
            measure: measured.output.clone(),
        })
        .with_context(|| format!("text encoder {}", e.name))?;
        encoders.push(EncoderReport {
            name: e.name.clone(),
            class: e.class.clone(),
            tokenizer,
            measured,
            verdict: pruned.verdict,
            report: pruned.report,
            text: pruned.text,
            sparsity: pruned.sparsity,
            cosine: pruned.cosine,
        });
    }
    let carried = carry_the_rest(&pipeline, &chosen, &dirs, &stage)?;
    let staged = stage.path().display().to_string();
    stage.commit()?;

    // The reports name the staged folder; the finished one is at the destination.
    // Written as given, without a trailing slash.
    let to = job
        .output
        .components()
        .collect::<PathBuf>()
        .display()
        .to_string();
    for e in &mut encoders {
        e.text = e.text.replace(&staged, &to);
        relocate(&mut e.report, &staged, &to);
    }
    let seconds = start.elapsed().as_secs_f64();
    let text_encoders = pipeline.encoders.iter().map(|e| e.name.clone()).collect();
    let verdict = verdict_line(&pipeline.class, &encoders, &carried, &job.output, seconds);
    Ok(FolderReport {
        version: env!("CARGO_PKG_VERSION"),
        input: job.input.clone(),
        output: job.output.clone(),
        pipeline: pipeline.class,
        text_encoders,
        largest: job.encoders.is_empty(),
        encoders,
        carried,
        seconds,
        verdict,
    })
}

/// Options that name one encoder's tokens, tokenizer, output or plan cannot hold for two.
fn check_one_encoder_options(job: &FolderJob, chosen: &[&Encoder]) -> Result<()> {
    if chosen.len() < 2 {
        return Ok(());
    }
    let given: Vec<&str> = job
        .tokenizer
        .as_ref()
        .map(|_| "--tokenizer")
        .into_iter()
        .chain(job.measure.as_ref().map(|_| "--measure"))
        .chain(job.one_encoder_options.iter().map(String::as_str))
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
/// tokenizer folder's. A folder without one is refused before any work, with the ways out.
fn tokenizer_for(job: &FolderJob, e: &Encoder) -> Result<Option<PathBuf>> {
    if let Some(t) = &job.tokenizer {
        return Ok(Some(t.clone()));
    }
    let (folder, what) = match &e.tokenizer {
        TokenizerFolder::Found { file } => return Ok(Some(file.clone())),
        _ if job.pre_tokenized => return Ok(None),
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
    output: &Path,
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
            let cos = e
                .cosine
                .map_or(String::new(), |c| format!(", held-out cosine {c:.4}"));
            let failed = match e.verdict {
                Verdict::Failed => " (FAILED)",
                _ => "",
            };
            format!(
                "{} {:.1}% of parameters removed{cos}{failed}",
                e.name,
                100.0 * e.sparsity
            )
        })
        .collect();
    format!(
        "{head}: {}; wrote pipeline {} ({class}; {} other files carried over: {} hard-linked, {} \
         copied) in {seconds:.1} s",
        each.join("; "),
        output.display(),
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
    pub unreadable: &'a [super::Unreadable],
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

/// The text of `inspect` on a pipeline folder.
pub fn render_listing(p: &Pipeline) -> String {
    let default = &p.default_encoder().name;
    let rel = |path: &Path| -> String {
        path.strip_prefix(&p.folder)
            .unwrap_or(path)
            .display()
            .to_string()
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} ({}): {} text encoder{}\n",
        p.folder.display(),
        p.class,
        p.encoders.len(),
        if p.encoders.len() == 1 { "" } else { "s" }
    );
    let _ = writeln!(
        s,
        "  {:<16} {:<30} {:>14} {:>14}  {:<28} measured",
        "encoder", "class", "parameters", "bytes", "tokenizer"
    );
    for e in &p.encoders {
        let tokenizer = match &e.tokenizer {
            TokenizerFolder::Found { file } => rel(file),
            TokenizerFolder::SlowOnly { folder } => format!("{}/ (no tokenizer.json)", rel(folder)),
            TokenizerFolder::Missing { folder } => format!("{}/ missing", rel(folder)),
        };
        let _ = writeln!(
            s,
            "{} {:<16} {:<30} {:>14} {:>14}  {:<28} {}",
            if &e.name == default { "*" } else { " " },
            e.name,
            e.class.as_deref().unwrap_or("?"),
            e.params,
            e.file_bytes,
            tokenizer,
            e.measured.output
        );
    }
    let _ = writeln!(
        s,
        "\n* pruned by default (the largest by weight bytes); choose with --encoder NAME \
         (repeatable)"
    );
    for e in &p.encoders {
        let data = e.files.len().saturating_sub(1);
        let _ = write!(s, "  {}: {}", e.name, rel(&e.model));
        if data > 0 {
            let _ = write!(
                s,
                " + {} data file{}",
                data,
                if data == 1 { "" } else { "s" }
            );
        }
        let _ = writeln!(s, "; measured {}: {}", e.measured.output, e.measured.reason);
        if let Some(w) = &e.measured.warning {
            let _ = writeln!(s, "    warning: {w}");
        }
    }
    for u in &p.unreadable {
        let _ = writeln!(s, "  {}: cannot be read: {}", u.name, u.error);
    }
    if !p.without_model.is_empty() {
        let _ = writeln!(
            s,
            "  listed without a {MODEL_FILE}: {}",
            p.without_model.join(", ")
        );
    }
    s
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
