//! What the calibration prompts are and how the engine runs them: the library's side of the
//! calibration options. The command line fills it (`commands::args::CalibArgs`) after checking
//! each value on its own; what needs the model (its tokenizer, vocabulary, static shapes) is
//! checked here.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::engine::EngineOptions;
use super::inputs::{self, CalibSet, PromptHalf};
use crate::error::SkrrError;
use crate::model_io::Model;
use crate::runtime::{Prepack, Sessions};

/// Calibration options shared by every job that measures D (score, plan, compare, the main
/// job). Field meanings are those of the flags of the same names (docs/usage.md).
#[derive(Debug, Clone)]
pub struct CalibConfig {
    /// Prompts, one per line, tokenized with the model's tokenizer.
    pub prompts: Option<PathBuf>,
    /// Pre-tokenized prompts (JSON lines of token ids).
    pub calib: Option<PathBuf>,
    /// The tokenizer.json (default: beside the model).
    pub tokenizer: Option<PathBuf>,
    pub max_length: usize,
    /// At least 1.
    pub num_prompts: Option<usize>,
    /// The null input's token ids, as written by the user ("1, 2").
    pub null_ids: Option<String>,
    pub no_null: bool,
    pub pad_id: Option<i64>,
    pub include_padding: bool,
    pub projection: Option<PathBuf>,
    /// At least 1.
    pub chunk: usize,
    /// Bytes.
    pub cache_mem: u64,
    pub measure: Option<String>,
    pub prepack: Prepack,
}

impl CalibConfig {
    /// The calibration set for `model`: its tokenizer.json (or `--tokenizer`), token ids checked
    /// against its vocabulary when the graph tells it. `part` picks the half of the built-in
    /// prompt set; files given by the user are used whole.
    pub fn calib_set(&self, model: &Model, part: PromptHalf) -> Result<CalibSet> {
        self.check_static_shape(model)?;
        let model_path = model.path.as_path();
        let graph = model.proto.graph.as_ref();
        let vocab = graph.and_then(crate::graph::model_vocab);
        let tokenizer_path = inputs::find_tokenizer(model_path, self.tokenizer.as_deref())?;
        let tokenizer = tokenizer_path
            .as_deref()
            .map(|p| inputs::PromptTokenizer::load(p, self.max_length, vocab))
            .transpose()?;
        let mut prompts = match (&self.calib, &self.prompts, &tokenizer) {
            (Some(path), _, _) => inputs::read_ids_jsonl(path, vocab)?,
            (None, prompts, Some(tok)) => {
                let texts = match prompts {
                    Some(p) => inputs::read_prompts(p)?,
                    None => inputs::default_prompts(part),
                };
                texts
                    .iter()
                    .map(|t| tok.encode(t))
                    .collect::<Result<Vec<_>>>()?
            }
            (None, _, None) => {
                return Err(SkrrError::BadInput(format!(
                    "no tokenizer.json beside {} and no --tokenizer: give one, or pre-tokenized \
                     input with --calib ids.jsonl",
                    model_path.display()
                ))
                .into())
            }
        };
        if let Some(n) = self.num_prompts {
            prompts.truncate(n);
        }
        let null = if self.no_null {
            None
        } else if let Some(ids) = &self.null_ids {
            Some(inputs::parse_null_ids(ids, vocab)?)
        } else if let Some(tok) = &tokenizer {
            Some(tok.encode("")?)
        } else {
            return Err(SkrrError::BadInput(
                "no tokenizer to make the null input from the empty prompt: give --null-ids, \
                 --tokenizer or --no-null"
                    .into(),
            )
            .into());
        };
        let pad_id = self
            .pad_id
            .or_else(|| tokenizer.as_ref().and_then(|t| t.pad_id()))
            .unwrap_or(0);
        inputs::check_id(pad_id, vocab).map_err(|m| {
            let whose = match self.pad_id {
                Some(_) => "--pad-id",
                None => "the tokenizer's pad token",
            };
            SkrrError::Usage(format!("{whose}: {m}"))
        })?;
        // Token ids are not truncated: a static-shape export cannot take a longer row.
        if let Some(len) = graph.and_then(|g| inputs::fixed_token_shape(g).1) {
            let too_long = prompts.iter().chain(&null).find(|r| r.len() as i64 > len);
            if let Some(row) = too_long {
                return Err(SkrrError::Usage(format!(
                    "a row of {} token ids is longer than the model's fixed length {len}",
                    row.len()
                ))
                .into());
            }
        }
        Ok(CalibSet {
            prompts,
            null,
            pad_id,
            max_length: self.max_length,
        })
    }

    /// The main job's two prompt sets: the search calibrates on the first, the fidelity check
    /// judges the result on the second, which the search never saw. The built-in set has two
    /// disjoint halves; a `held_out` file (same format as the calibration input) is used whole;
    /// otherwise every 4th of the user's prompts is held out (the last of 2 or 3).
    /// `--num-prompts` bounds each set.
    /// The string says where the held-out prompts come from, for the report.
    pub fn calib_and_held_out(
        &self,
        model: &Model,
        held_out: Option<&Path>,
    ) -> Result<(CalibSet, CalibSet, String)> {
        let user = self.calib.as_deref().or(self.prompts.as_deref());
        match (held_out, user) {
            (Some(file), _) => {
                if user.is_some_and(|u| crate::model_io::same_file(u, file).unwrap_or(false)) {
                    return Err(SkrrError::Usage(format!(
                        "--heldout {} is the calibration file itself: the check would not be \
                         held out",
                        file.display()
                    ))
                    .into());
                }
                let (calib, prompts) = match &self.calib {
                    Some(_) => (Some(file.to_path_buf()), None),
                    None => (None, Some(file.to_path_buf())),
                };
                let held = CalibConfig {
                    calib,
                    prompts,
                    ..self.clone()
                };
                Ok((
                    self.calib_set(model, PromptHalf::Calibration)?,
                    held.calib_set(model, PromptHalf::HeldOut)?,
                    file.display().to_string(),
                ))
            }
            (None, None) => Ok((
                self.calib_set(model, PromptHalf::Calibration)?,
                self.calib_set(model, PromptHalf::HeldOut)?,
                "built-in held-out half".into(),
            )),
            (None, Some(file)) => {
                let all = CalibConfig {
                    num_prompts: None,
                    ..self.clone()
                }
                .calib_set(model, PromptHalf::Calibration)?;
                if all.prompts.len() < 2 {
                    return Err(SkrrError::BadInput(format!(
                        "{}: the fidelity check holds out every 4th prompt and needs at least 2 \
                         ({} given); add prompts, give --heldout FILE, or --no-compare",
                        file.display(),
                        all.prompts.len()
                    ))
                    .into());
                }
                // Every 4th; the last one of 2 or 3 prompts.
                let n = all.prompts.len();
                let held_out = |i: usize| i % 4 == 3 || (n < 4 && i == n - 1);
                let (held, kept): (Vec<_>, Vec<_>) = all
                    .prompts
                    .iter()
                    .cloned()
                    .enumerate()
                    .partition(|(i, _)| held_out(*i));
                let take = |rows: Vec<(usize, Vec<i64>)>| CalibSet {
                    prompts: rows
                        .into_iter()
                        .map(|(_, p)| p)
                        .take(self.num_prompts.unwrap_or(usize::MAX))
                        .collect(),
                    ..all.clone()
                };
                Ok((
                    take(kept),
                    take(held),
                    match n {
                        2 | 3 => format!("the last prompt of {}", file.display()),
                        _ => format!("every 4th prompt of {}", file.display()),
                    },
                ))
            }
        }
    }

    /// A static-shape export takes only batches of its fixed size, padded to its fixed length;
    /// the options that produce them are asked for rather than guessed, since padding that
    /// counts in D changes what D measures (which is what such a pipeline feeds its denoiser).
    fn check_static_shape(&self, model: &Model) -> Result<()> {
        let Some(graph) = model.proto.graph.as_ref() else {
            return Ok(());
        };
        let usage = |m: String| -> anyhow::Error { SkrrError::Usage(m).into() };
        let (batch, len) = inputs::fixed_token_shape(graph);
        if let Some(len) = len {
            if !self.include_padding || i64::try_from(self.max_length) != Ok(len) {
                return Err(usage(format!(
                    "input_ids has a fixed length of {len} (a static-shape export): every prompt \
                     must be padded to it; run with --include-padding --max-length {len}"
                )));
            }
        }
        match batch {
            Some(1) if self.chunk != 1 => Err(usage(
                "input_ids has a fixed batch size of 1 (a static-shape export): run with --chunk 1"
                    .into(),
            )),
            Some(b) if b != 1 => Err(usage(format!(
                "input_ids has a fixed batch size of {b}: export the model with a dynamic batch \
                 axis (or batch 1)"
            ))),
            _ => Ok(()),
        }
    }

    /// The files this configuration reads, so that outputs can be kept off them.
    pub fn files(&self, model: &Model) -> Result<Vec<PathBuf>> {
        let tokenizer = inputs::find_tokenizer(&model.path, self.tokenizer.as_deref())?;
        Ok([&self.prompts, &self.calib, &tokenizer, &self.projection]
            .into_iter()
            .flatten()
            .cloned()
            .collect())
    }

    /// The engine's options, its sessions built by `sessions`.
    pub fn engine_options(&self, sessions: Sessions) -> EngineOptions {
        EngineOptions {
            sessions,
            null: !self.no_null,
            include_padding: self.include_padding,
            chunk: self.chunk,
            cache_mem: self.cache_mem,
            projection: self.projection.clone(),
            prepack: self.prepack,
            measure: self.measure.clone(),
        }
    }
}
