//! Calibration inputs: token id sequences for the prompts and the null input, read from a
//! prompt file (tokenized here), an ids file, or the built-in prompt set.
//!
//! Everything is tokenized once, up front, with explicit truncation and *no* tokenizer padding:
//! padding is the engine's business (it pads per chunk, or to `max_length` when padded positions
//! count), so a prompt's ids never depend on which other prompts it is batched with.

use std::path::{Path, PathBuf};

use anyhow::Result;
use tokenizers::{Tokenizer, TruncationParams};

use crate::error::SkrrError;
use crate::onnx::GraphProto;

/// The built-in prompt set: varied text-to-image prompts written for this project.
const DEFAULT_PROMPTS: &str = include_str!("prompts.txt");

/// Which half of the built-in prompt set to use. The halves are disjoint so that a plan found on
/// `Calibration` can be judged on prompts it never saw (`compare`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptHalf {
    Calibration,
    HeldOut,
}

/// Tokenized calibration data, ready for the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibSet {
    /// One id sequence per prompt (special tokens included, truncated to `max_length`).
    pub prompts: Vec<Vec<i64>>,
    /// The null input (empty prompt with special tokens), or `None` when D_null is not wanted.
    pub null: Option<Vec<i64>>,
    /// Id written at padded positions.
    pub pad_id: i64,
    /// Length every sequence is padded to when padded positions count in D.
    pub max_length: usize,
}

/// The built-in prompts, split deterministically: even lines calibrate, odd lines are held out.
pub fn default_prompts(half: PromptHalf) -> Vec<String> {
    let keep = match half {
        PromptHalf::Calibration => 0,
        PromptHalf::HeldOut => 1,
    };
    DEFAULT_PROMPTS
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .enumerate()
        .filter(|(i, _)| i % 2 == keep)
        .map(|(_, l)| l.to_string())
        .collect()
}

fn bad(msg: String) -> anyhow::Error {
    SkrrError::BadInput(msg).into()
}

/// Reads a prompt file: one prompt per line; blank lines are ignored (a prompt file is prose).
pub fn read_prompts(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad(format!("{}: cannot read prompt file: {e}", path.display())))?;
    let prompts: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if prompts.is_empty() {
        return Err(bad(format!("{}: no prompts in file", path.display())));
    }
    Ok(prompts)
}

/// Reads `ids.jsonl`: each line is a JSON array of token ids or an object with `input_ids`.
/// Every defect is reported with `file:line`, because these files are usually machine-made and
/// a silent skip would change D without anyone noticing.
pub fn read_ids_jsonl(path: &Path, vocab: Option<usize>) -> Result<Vec<Vec<i64>>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        bad(format!(
            "{}: cannot read calibration file: {e}",
            path.display()
        ))
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = format!("{}:{}", path.display(), i + 1);
        out.push(parse_ids_line(line, vocab).map_err(|msg| bad(format!("{at}: {msg}")))?);
    }
    if out.is_empty() {
        return Err(bad(format!("{}: no sequences in file", path.display())));
    }
    Ok(out)
}

fn parse_ids_line(line: &str, vocab: Option<usize>) -> std::result::Result<Vec<i64>, String> {
    if line.trim().is_empty() {
        return Err("empty line (expected a JSON array of token ids)".into());
    }
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let array = match &value {
        serde_json::Value::Array(a) => a,
        serde_json::Value::Object(o) => match o.get("input_ids") {
            Some(serde_json::Value::Array(a)) => a,
            Some(_) => return Err("\"input_ids\" is not an array".into()),
            None => return Err("object without \"input_ids\"".into()),
        },
        _ => return Err("expected a JSON array of token ids or {\"input_ids\": [...]}".into()),
    };
    if array.is_empty() {
        return Err("empty token id list".into());
    }
    array
        .iter()
        .enumerate()
        .map(|(k, v)| {
            let id = v
                .as_i64()
                .ok_or_else(|| format!("token {k} is {v}, not an integer token id"))?;
            check_id(id, vocab).map_err(|m| format!("token {k}: {m}"))
        })
        .collect()
}

pub(crate) fn check_id(id: i64, vocab: Option<usize>) -> std::result::Result<i64, String> {
    if id < 0 {
        return Err(format!("token id {id} is negative"));
    }
    if let Some(v) = vocab {
        if id as u64 >= v as u64 {
            return Err(format!(
                "token id {id} is outside the model's vocabulary of {v}"
            ));
        }
    }
    Ok(id)
}

/// Parses `--null-ids 1,2`.
pub fn parse_null_ids(text: &str, vocab: Option<usize>) -> Result<Vec<i64>> {
    let ids: Vec<i64> = text
        .split(',')
        .map(|s| {
            let s = s.trim();
            let id = s
                .parse::<i64>()
                .map_err(|_| format!("{s:?} is not a token id"))?;
            check_id(id, vocab)
        })
        .collect::<std::result::Result<_, String>>()
        .map_err(|m| bad(format!("--null-ids: {m}")))?;
    if ids.is_empty() {
        return Err(bad("--null-ids: no ids".into()));
    }
    Ok(ids)
}

/// The tokenizer to use: `explicit` if given (must exist), else `tokenizer.json` beside the model.
pub fn find_tokenizer(model_path: &Path, explicit: Option<&Path>) -> Result<Option<PathBuf>> {
    if let Some(p) = explicit {
        if !p.is_file() {
            return Err(bad(format!("{}: tokenizer file not found", p.display())));
        }
        return Ok(Some(p.to_path_buf()));
    }
    let beside = model_path
        .parent()
        .unwrap_or(Path::new("."))
        .join("tokenizer.json");
    Ok(beside.is_file().then_some(beside))
}

/// A loaded tokenizer with truncation at `max_length` (special tokens included) and no padding.
pub struct PromptTokenizer {
    tokenizer: Tokenizer,
    max_length: usize,
    path: PathBuf,
    vocab: Option<usize>,
}

impl PromptTokenizer {
    /// `vocab` is the model's vocabulary size: a tokenizer that emits larger ids does not belong
    /// to this model, which is reported rather than crashing inside ONNX Runtime.
    pub fn load(path: &Path, max_length: usize, vocab: Option<usize>) -> Result<PromptTokenizer> {
        if max_length == 0 {
            return Err(SkrrError::Usage("--max-length must be at least 1".into()).into());
        }
        let mut tokenizer = Tokenizer::from_file(path)
            .map_err(|e| bad(format!("{}: cannot load tokenizer: {e}", path.display())))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length,
                ..Default::default()
            }))
            .map_err(|e| bad(format!("{}: cannot set truncation: {e}", path.display())))?;
        Ok(PromptTokenizer {
            tokenizer,
            max_length,
            path: path.to_path_buf(),
            vocab,
        })
    }

    /// Token ids of `text` with the tokenizer's special tokens (so "" gives the null input).
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let enc = self.tokenizer.encode(text, true).map_err(|e| {
            bad(format!(
                "{}: cannot tokenize {text:?}: {e}",
                self.path.display()
            ))
        })?;
        let ids: Vec<i64> = enc.get_ids().iter().map(|&i| i64::from(i)).collect();
        // The tokenizer keeps its special tokens even when they alone exceed the limit.
        if ids.len() > self.max_length {
            return Err(SkrrError::Usage(format!(
                "--max-length {} is too short for {}: it keeps its special tokens whole and \
                 made {} tokens of {text:?}",
                self.max_length,
                self.path.display(),
                ids.len()
            ))
            .into());
        }
        if ids.is_empty() {
            return Err(bad(format!(
                "{}: {text:?} tokenizes to no tokens (the tokenizer adds no special tokens); \
                 give --null-ids or --no-null",
                self.path.display()
            )));
        }
        for &id in &ids {
            check_id(id, self.vocab).map_err(|m| {
                bad(format!(
                    "{}: {m} (is this the model's tokenizer?)",
                    self.path.display()
                ))
            })?;
        }
        Ok(ids)
    }

    /// The id the tokenizer pads with: its padding configuration, else a conventional pad token.
    pub fn pad_id(&self) -> Option<i64> {
        if let Some(p) = self.tokenizer.get_padding() {
            return Some(i64::from(p.pad_id));
        }
        ["<pad>", "[PAD]", "<|endoftext|>", "</s>"]
            .iter()
            .find_map(|t| self.tokenizer.token_to_id(t))
            .map(i64::from)
    }
}

/// The fixed (batch, sequence) sizes of the token inputs of a static-shape export (CLIP
/// exported as `input_ids [1, 77]` for TensorRT), `None` for a dynamic axis.
pub fn fixed_token_shape(graph: &GraphProto) -> (Option<i64>, Option<i64>) {
    let mut fed = crate::graph::fed_inputs(graph);
    let Some(ids) = fed.find(|i| i.name() == "input_ids") else {
        return (None, None);
    };
    let dims = crate::graph::fixed_dims(ids).unwrap_or_default();
    let fixed = |i: usize| dims.get(i).copied().flatten();
    (fixed(0), fixed(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    fn err_of(text: &str, vocab: Option<usize>) -> String {
        let f = write(text);
        let e = read_ids_jsonl(f.path(), vocab).unwrap_err();
        assert_eq!(
            crate::error::exit_code_of(&e),
            crate::error::exit::BAD_INPUT
        );
        e.to_string()
    }

    #[test]
    fn ids_jsonl_accepts_arrays_and_objects() {
        let f = write("[1, 2, 3]\n{\"input_ids\": [4, 5], \"other\": 1}\n");
        let got = read_ids_jsonl(f.path(), Some(10)).unwrap();
        assert_eq!(got, vec![vec![1, 2, 3], vec![4, 5]]);
    }

    #[test]
    fn ids_jsonl_errors_name_file_and_line() {
        let e = err_of("[1,2]\n[1,\n", None);
        assert!(e.contains(":2: invalid JSON"), "{e}");
        let e = err_of("[1,2]\n\n[3]\n", None);
        assert!(e.contains(":2: empty line"), "{e}");
        let e = err_of("[1,2]\n[3, 99]\n", Some(50));
        assert!(e.contains(":2: token 1: token id 99 is outside"), "{e}");
        let e = err_of("[1.5]\n", None);
        assert!(e.contains(":1: token 0 is 1.5, not an integer"), "{e}");
        let e = err_of("[\"a\"]\n", None);
        assert!(e.contains(":1: token 0 is \"a\""), "{e}");
        let e = err_of("{\"ids\": [1]}\n", None);
        assert!(e.contains("without \"input_ids\""), "{e}");
        let e = err_of("[-1]\n", None);
        assert!(e.contains("negative"), "{e}");
        let e = err_of("[]\n", None);
        assert!(e.contains("empty token id list"), "{e}");
        let e = err_of("", None);
        assert!(e.contains("no sequences"), "{e}");
    }

    #[test]
    fn null_ids_parse_and_check() {
        assert_eq!(parse_null_ids("1, 2", Some(5)).unwrap(), vec![1, 2]);
        assert!(parse_null_ids("1,x", None).is_err());
        assert!(parse_null_ids("7", Some(5))
            .unwrap_err()
            .to_string()
            .contains("outside"));
    }

    #[test]
    fn default_prompt_halves_are_disjoint_and_large() {
        let a = default_prompts(PromptHalf::Calibration);
        let b = default_prompts(PromptHalf::HeldOut);
        assert!(a.len() >= 128 && b.len() >= 128, "{} {}", a.len(), b.len());
        let set: std::collections::HashSet<_> = a.iter().collect();
        assert!(b.iter().all(|p| !set.contains(p)));
    }
}
