//! Option groups several commands share (`#[command(flatten)]` them), each turned into the
//! library's configuration by one function that checks what can be checked without the model
//! and names the flag at fault.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use crate::calibrate::{self, CalibConfig};
use crate::compensate::Compensate;
use crate::error::SkrrError;
use crate::fidelity::Tolerances;
use crate::model_io::{ExternalData, WriteOptions};
use crate::runtime::Prepack;
use crate::search::methods::{Method, SearchConfig};
use crate::search::Rank;

fn usage(m: String) -> anyhow::Error {
    SkrrError::Usage(m).into()
}

/// Calibration options shared by every command that measures D (`score`, `plan`, `compare`,
/// the main command): `#[command(flatten)]` them.
#[derive(Debug, Clone, clap::Args)]
pub struct CalibArgs {
    /// Prompts, one per line (tokenized with the model's tokenizer.json). Default: the built-in
    /// set, its calibration half for score and plan, its held-out half for compare.
    #[arg(long, value_name = "FILE", conflicts_with = "calib")]
    pub prompts: Option<PathBuf>,
    /// Pre-tokenized calibration input: one JSON array of token ids per line, or
    /// {"input_ids": [...]}.
    #[arg(long, value_name = "FILE")]
    pub calib: Option<PathBuf>,
    /// tokenizer.json to use (default: tokenizer.json beside the model).
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Truncate prompts to this many tokens (special tokens included); also the padded length
    /// when --include-padding is set.
    #[arg(long, default_value_t = 77, value_name = "N")]
    pub max_length: usize,
    /// Use at most the first N prompts (in the main job: N for the search and at most N for
    /// the fidelity check).
    #[arg(long, value_name = "N")]
    pub num_prompts: Option<usize>,
    /// Token ids of the null input (default: the empty prompt tokenized with special tokens).
    #[arg(long, value_name = "IDS", conflicts_with = "no_null")]
    pub null_ids: Option<String>,
    /// Leave the null input out of D (D = D_c).
    #[arg(long)]
    pub no_null: bool,
    /// Id used for padding (default: the tokenizer's pad token, else 0).
    #[arg(long, value_name = "ID")]
    pub pad_id: Option<i64>,
    /// Count padded positions in D, every sequence padded to --max-length (for pipelines such
    /// as SD3/FLUX that feed padded embeddings to the denoiser).
    #[arg(long)]
    pub include_padding: bool,
    /// Denoiser text projection (ONNX, one input) applied to dense and candidate outputs.
    #[arg(long, value_name = "FILE")]
    pub projection: Option<PathBuf>,
    /// Prompts per ONNX Runtime batch (also the granularity of early abandoning).
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub chunk: usize,
    /// Memory bound for cached stream values, e.g. 512M or 4G (default: a quarter of the
    /// available memory).
    #[arg(long, value_name = "BYTES")]
    pub cache_mem: Option<String>,
    /// The graph output D and the fidelity check are measured on (default: last_hidden_state,
    /// else the first output): one computed from the last layer (text_embeds, CLIP's pooled
    /// embedding) or a stream value between layers (hidden_states.N, the penultimate layer).
    #[arg(long, value_name = "OUTPUT")]
    pub measure: Option<String>,
    /// Let ONNX Runtime keep pre-packed copies of the weights: faster runs for the weights'
    /// size in memory again. auto: when the weights take at most a quarter of the available
    /// memory.
    #[arg(long, value_enum, default_value_t = Prepack::Auto)]
    pub prepack: Prepack,
}

impl CalibArgs {
    pub fn config(&self) -> Result<CalibConfig> {
        if self.num_prompts == Some(0) {
            return Err(usage("--num-prompts must be at least 1".into()));
        }
        if self.chunk == 0 {
            return Err(usage("--chunk must be at least 1".into()));
        }
        let cache_mem = match &self.cache_mem {
            Some(text) => calibrate::parse_bytes(text)
                .ok_or_else(|| usage(format!("--cache-mem {text:?}: expected e.g. 512M or 4G")))?,
            None => calibrate::default_cache_mem(),
        };
        Ok(CalibConfig {
            prompts: self.prompts.clone(),
            calib: self.calib.clone(),
            tokenizer: self.tokenizer.clone(),
            max_length: self.max_length,
            num_prompts: self.num_prompts,
            null_ids: self.null_ids.clone(),
            no_null: self.no_null,
            pad_id: self.pad_id,
            include_padding: self.include_padding,
            projection: self.projection.clone(),
            chunk: self.chunk,
            cache_mem,
            measure: self.measure.clone(),
            prepack: self.prepack,
        })
    }
}

/// How to search (shared by `plan` and the end-to-end command).
#[derive(Debug, Clone, clap::Args)]
pub struct SearchArgs {
    /// Beam width of the skip phase (1 = greedy).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub beam: u32,
    /// Search method; the baselines' plans are re-scored with the full Skrr D for comparison.
    #[arg(long, value_enum, default_value_t = Method::Skrr)]
    pub method: Method,
    /// Skip phase only (no re-use pass).
    #[arg(long)]
    pub no_reuse: bool,
    /// Stop the skip phase after this many seconds (an error if no target was reached).
    #[arg(long, value_name = "SECONDS")]
    pub time_limit: Option<f64>,
    /// Compensate what the plan removes, in closed form on the calibration prompts: `merged`
    /// folds maps into the kept sub-block before each skipped run (no parameter added);
    /// `linear` writes a map on the measured output (its d² + d parameters count against the
    /// sparsity, so the search removes that much more).
    #[arg(long, value_enum, default_value_t = Compensate::None)]
    pub compensate: Compensate,
    /// What the Skrr search ranks candidates by: their D, or (with --compensate linear) their
    /// D after a map fitted for each, which costs a fit per candidate.
    #[arg(long, value_enum, default_value_t = Rank::Plain)]
    pub rank: Rank,
}

impl SearchArgs {
    /// The search configuration; warns about options the method ignores.
    pub fn config(&self) -> Result<SearchConfig> {
        if let Some(t) = self.time_limit.filter(|t| !(*t >= 0.0 && t.is_finite())) {
            return Err(usage(format!(
                "--time-limit {t}: expected a finite number of seconds ≥ 0"
            )));
        }
        if self.method != Method::Skrr
            && (self.beam != 3 || self.no_reuse || self.rank != Rank::Plain)
        {
            log::warn!(
                "--beam, --no-reuse and --rank apply to --method skrr only ({} has its own \
                 definition)",
                self.method.name()
            );
        }
        Ok(SearchConfig {
            method: self.method,
            beam: self.beam as usize,
            reuse: !self.no_reuse,
            time_limit: self.time_limit.map(Duration::from_secs_f64),
            rank: self.rank,
        })
    }
}

/// Pass/fail limits of a fidelity check (shared with the end-to-end command).
#[derive(Debug, Clone, clap::Args)]
pub struct ToleranceArgs {
    /// Lowest acceptable mean per-token cosine similarity between pruned and dense outputs.
    #[arg(
        long,
        default_value_t = 0.9,
        value_name = "COS",
        allow_negative_numbers = true
    )]
    pub min_cos: f64,
    /// Largest acceptable factor between the null embedding's norms (either way).
    #[arg(long, default_value_t = 2.0, value_name = "FACTOR")]
    pub max_null_ratio: f64,
    /// Largest acceptable D = D_c + D_null.
    #[arg(long, value_name = "D")]
    pub max_d: Option<f64>,
    /// Element-wise absolute tolerance (an element fails if above both atol and rtol·|dense|).
    #[arg(long, value_name = "TOL")]
    pub atol: Option<f64>,
    /// Element-wise relative tolerance.
    #[arg(long, value_name = "TOL")]
    pub rtol: Option<f64>,
}

impl ToleranceArgs {
    /// The limits, refused when no result could pass or fail them as meant (a cosine above 1,
    /// a NaN): a gate that cannot work is a usage error, not a FAILED after the whole run.
    pub fn tolerances(&self) -> Result<Tolerances> {
        let refuse = |flag: &str, v: f64, range: &str| -> anyhow::Error {
            SkrrError::Usage(format!("--{flag} {v}: expected {range}")).into()
        };
        if !(-1.0..=1.0).contains(&self.min_cos) {
            return Err(refuse("min-cos", self.min_cos, "a cosine in [-1, 1]"));
        }
        if !(self.max_null_ratio >= 1.0 && self.max_null_ratio.is_finite()) {
            return Err(refuse(
                "max-null-ratio",
                self.max_null_ratio,
                "a finite factor ≥ 1",
            ));
        }
        for (flag, v) in [
            ("max-d", self.max_d),
            ("atol", self.atol),
            ("rtol", self.rtol),
        ] {
            if let Some(v) = v.filter(|v| !(*v >= 0.0 && v.is_finite())) {
                return Err(refuse(flag, v, "a finite number ≥ 0"));
            }
        }
        Ok(Tolerances {
            min_cos: self.min_cos,
            max_null_ratio: self.max_null_ratio,
            max_d: self.max_d,
            atol: self.atol,
            rtol: self.rtol,
        })
    }
}

/// Where a written model's tensor data goes; the same flags on every command that writes one.
#[derive(Debug, Clone, clap::Args)]
pub struct ExternalDataArgs {
    /// Store every tensor of 1 KiB or more in one external data file beside OUTPUT, named NAME
    /// (default: OUTPUT's file name + ".data"), or NAME with a random tag before its extension
    /// when a file of that name exists (the data of the output being replaced stays whole until
    /// the new model is in place, and is then deleted if no other model in the folder reads it).
    /// Without this flag or --inline, external data is kept when the input had it or the model
    /// exceeds the 2 GB protobuf limit.
    #[arg(long, value_name = "NAME", num_args = 0..=1, require_equals = true, default_missing_value = "", conflicts_with = "inline")]
    pub external_data: Option<String>,
    /// Store every tensor inside the model file (fails above the 2 GB protobuf limit).
    #[arg(long)]
    pub inline: bool,
}

impl ExternalDataArgs {
    pub fn write_options(&self) -> WriteOptions {
        let external = match (&self.external_data, self.inline) {
            (Some(name), _) => ExternalData::Always {
                file: Some(name.clone()).filter(|n| !n.is_empty()),
            },
            (None, true) => ExternalData::Never,
            (None, false) => ExternalData::Auto,
        };
        WriteOptions {
            external,
            ..WriteOptions::default()
        }
    }
}
