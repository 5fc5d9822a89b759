//! Diffusers pipeline folders (issue #15): a folder with `model_index.json` and one folder per
//! component, as `optimum-cli export onnx` writes a text-to-image pipeline (`text_encoder/`,
//! `text_encoder_2/`, `tokenizer/`, `transformer/` or `unet/`, `vae_decoder/`, `scheduler/`, …,
//! each model as `model.onnx` plus its data file). People hold their models this way, so the
//! main job takes the folder itself: it finds the text encoders, pairs each with its tokenizer
//! folder and with the output the pipeline reads from it (`outputs`), prunes the chosen ones
//! through the ordinary main job, and writes a whole new pipeline folder (`job`, `stage`).
//!
//! Nothing here knows the command line or prints: [`prune`] takes the main job's `Job` with a
//! folder as its input and returns a typed report, which `crate::report::folder` renders.

mod job;
pub mod outputs;
mod stage;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::error::SkrrError;
use crate::model_io::{read_model, stored_len};

pub use job::{prune, Carried, EncoderReport, FolderReport, Listing, Verdict};
pub use outputs::Measured;

/// The file that makes a folder a diffusers pipeline.
pub const MODEL_INDEX: &str = "model_index.json";

/// The model file of a component folder, as Optimum and diffusers' ONNX pipelines name it.
pub const MODEL_FILE: &str = "model.onnx";

/// A pipeline folder as far as its text encoders go.
#[derive(Debug, Serialize)]
pub struct Pipeline {
    pub folder: PathBuf,
    /// `_class_name` of model_index.json (e.g. `StableDiffusion3Pipeline`).
    pub class: String,
    /// Every text encoder with a model file, in name order (`text_encoder`, `text_encoder_2`, …).
    pub encoders: Vec<Encoder>,
    /// Text encoders model_index.json names whose folder holds no model file.
    pub without_model: Vec<String>,
    /// Text encoders whose model cannot be read: refused if chosen, but they do not keep the
    /// others from being pruned (their files are carried over as they are).
    pub unreadable: Vec<Unreadable>,
}

#[derive(Debug, Serialize)]
pub struct Unreadable {
    pub name: String,
    pub error: String,
}

#[derive(Debug, Serialize)]
pub struct Encoder {
    /// The component's name, which is its folder's name.
    pub name: String,
    /// The class model_index.json gives it (`["transformers", "T5EncoderModel"]` → `T5EncoderModel`).
    pub class: Option<String>,
    pub model: PathBuf,
    /// The model file and its external data files.
    pub files: Vec<PathBuf>,
    pub file_bytes: u64,
    pub params: u64,
    /// Bytes of its weights: what "the largest encoder" is measured by.
    pub param_bytes: u64,
    pub outputs: Vec<String>,
    pub tokenizer: TokenizerFolder,
    /// The output the main job measures for this pipeline.
    pub measured: Measured,
}

/// The tokenizer folder paired with a text encoder (`text_encoder_3` ↔ `tokenizer_3`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TokenizerFolder {
    /// Its `tokenizer.json`, which the tokenizers crate reads.
    Found {
        file: PathBuf,
    },
    /// The folder holds only a slow tokenizer's files (`vocab.json` + `merges.txt`,
    /// `spiece.model`): diffusers saves CLIPTokenizer that way.
    SlowOnly {
        folder: PathBuf,
    },
    Missing {
        folder: PathBuf,
    },
}

impl TokenizerFolder {
    pub fn file(&self) -> Option<&Path> {
        match self {
            TokenizerFolder::Found { file } => Some(file),
            _ => None,
        }
    }
}

/// `tokenizer` for `text_encoder`, `tokenizer_N` for `text_encoder_N`: the pairing diffusers
/// pipelines declare (`self.tokenizer_3` encodes for `self.text_encoder_3`).
pub fn tokenizer_name(encoder: &str) -> String {
    match encoder.strip_prefix("text_encoder") {
        Some(suffix) => format!("tokenizer{suffix}"),
        None => format!("{encoder}_tokenizer"),
    }
}

/// The tokenizer folder beside `encoder` in `pipeline` and what it holds.
pub fn tokenizer_folder(pipeline: &Path, encoder: &str) -> TokenizerFolder {
    let folder = pipeline.join(tokenizer_name(encoder));
    let file = folder.join("tokenizer.json");
    if file.is_file() {
        TokenizerFolder::Found { file }
    } else if folder.is_dir() {
        TokenizerFolder::SlowOnly { folder }
    } else {
        TokenizerFolder::Missing { folder }
    }
}

/// Whether a component name is a text encoder's: `text_encoder` or `text_encoder_<N>`.
fn is_text_encoder(name: &str) -> bool {
    match name.strip_prefix("text_encoder") {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix('_')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
        None => false,
    }
}

/// `text_encoder` < `text_encoder_2` < `text_encoder_10`.
fn encoder_order(name: &str) -> (u64, String) {
    let n = name
        .rsplit_once('_')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(1);
    (n, name.to_string())
}

/// Whether `path` is a diffusers pipeline folder (a folder with `model_index.json`).
pub fn is_pipeline(path: &Path) -> bool {
    path.join(MODEL_INDEX).is_file()
}

/// The refusal for a folder that is no pipeline, with the two inputs the main job takes.
pub fn not_a_pipeline(path: &Path) -> anyhow::Error {
    SkrrError::BadModel {
        path: path.to_path_buf(),
        msg: format!(
            "not a model file or a diffusers pipeline folder: a folder needs {MODEL_INDEX} (give \
             the encoder's .onnx file, or the folder `optimum-cli export onnx` wrote for the \
             whole pipeline)"
        ),
    }
    .into()
}

/// `_class_name` and the components of model_index.json (each `[library, class]`, or
/// `[null, null]` for a component the pipeline was saved without).
fn read_index(folder: &Path) -> Result<(String, BTreeMap<String, Option<String>>)> {
    let path = folder.join(MODEL_INDEX);
    let bad = |msg: String| -> anyhow::Error {
        SkrrError::BadModel {
            path: path.clone(),
            msg,
        }
        .into()
    };
    let text = std::fs::read_to_string(&path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let object = value
        .as_object()
        .ok_or_else(|| bad("not a JSON object".into()))?;
    let class = object
        .get("_class_name")
        .and_then(|c| c.as_str())
        .ok_or_else(|| bad("no \"_class_name\": not a diffusers model_index.json".into()))?
        .to_string();
    let components = object
        .iter()
        .filter(|(k, _)| !k.starts_with('_'))
        .filter_map(|(k, v)| {
            let pair = v.as_array().filter(|a| a.len() == 2)?;
            let listed = !pair[0].is_null() || !pair[1].is_null();
            listed.then(|| (k.clone(), pair[1].as_str().map(str::to_string)))
        })
        .collect();
    Ok((class, components))
}

impl Pipeline {
    /// Reads model_index.json and every text encoder's model (the graph and tensor sizes, not
    /// the weights), and chooses each encoder's measured output for the pipeline's class.
    pub fn read(folder: &Path) -> Result<Pipeline> {
        if !is_pipeline(folder) {
            return Err(not_a_pipeline(folder));
        }
        let (class, components) = read_index(folder)?;
        let mut names: Vec<String> = components
            .keys()
            .filter(|k| is_text_encoder(k))
            .cloned()
            .collect();
        for entry in std::fs::read_dir(folder)
            .with_context(|| format!("cannot list {}", folder.display()))?
        {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_text_encoder(&name) && entry.path().is_dir() && !names.contains(&name) {
                names.push(name);
            }
        }
        names.sort_by_key(|n| encoder_order(n));
        let mut encoders = Vec::new();
        let mut without_model = Vec::new();
        let mut unreadable = Vec::new();
        for name in names {
            let model = folder.join(&name).join(MODEL_FILE);
            if !model.is_file() {
                without_model.push(name);
                continue;
            }
            let class_of = components.get(&name).cloned().flatten();
            match Encoder::read(folder, &class, name.clone(), class_of, model) {
                Ok(e) => encoders.push(e),
                Err(e) => unreadable.push(Unreadable {
                    name,
                    error: format!("{e:#}"),
                }),
            }
        }
        if encoders.is_empty() {
            let why = match (unreadable.first(), without_model.is_empty()) {
                (Some(u), _) => format!("no text encoder can be read ({}: {})", u.name, u.error),
                (None, true) => format!("no text_encoder*/{MODEL_FILE}"),
                (None, false) => format!(
                    "no text_encoder*/{MODEL_FILE} (listed: {})",
                    without_model.join(", ")
                ),
            };
            return Err(SkrrError::BadModel {
                path: folder.to_path_buf(),
                msg: format!("a diffusers pipeline ({class}) to prune, but {why}"),
            }
            .into());
        }
        Ok(Pipeline {
            folder: folder.to_path_buf(),
            class,
            encoders,
            without_model,
            unreadable,
        })
    }

    /// The encoder the main job prunes when none is named: the largest by weight bytes, as the
    /// Skrr paper prunes the T5 of SD3, FLUX and PixArt (ties go to the first in name order).
    pub fn default_encoder(&self) -> &Encoder {
        let mut best = &self.encoders[0];
        for e in &self.encoders[1..] {
            if e.param_bytes > best.param_bytes {
                best = e;
            }
        }
        best
    }

    /// The encoders `names` asks for, in the order given, once each; the default one when
    /// `names` is empty.
    pub fn choose(&self, names: &[String]) -> Result<Vec<&Encoder>> {
        if names.is_empty() {
            return Ok(vec![self.default_encoder()]);
        }
        let mut chosen: Vec<&Encoder> = Vec::new();
        for name in names {
            if let Some(u) = self.unreadable.iter().find(|u| &u.name == name) {
                return Err(SkrrError::BadModel {
                    path: self.folder.join(name),
                    msg: format!("--encoder {name} cannot be read: {}", u.error),
                }
                .into());
            }
            let Some(e) = self.encoders.iter().find(|e| &e.name == name) else {
                let have: Vec<&str> = self.encoders.iter().map(|e| e.name.as_str()).collect();
                let listed = match self.without_model.contains(name) {
                    true => format!(" ({name}/ holds no {MODEL_FILE})"),
                    false => String::new(),
                };
                return Err(SkrrError::Usage(format!(
                    "--encoder {name}: {} has no such text encoder{listed}; its text encoders \
                     are {}",
                    self.folder.display(),
                    have.join(", ")
                ))
                .into());
            };
            if !chosen.iter().any(|c| c.name == e.name) {
                chosen.push(e);
            }
        }
        Ok(chosen)
    }
}

impl Encoder {
    fn read(
        pipeline: &Path,
        pipeline_class: &str,
        name: String,
        class: Option<String>,
        model: PathBuf,
    ) -> Result<Encoder> {
        let m = read_model(&model)?;
        let graph = m.proto.graph.as_ref().context("the model has no graph")?;
        let mut params = 0u64;
        let mut param_bytes = 0u64;
        for t in &graph.initializer {
            params += crate::model_io::element_count(t)?;
            param_bytes += stored_len(t)?;
        }
        let outputs: Vec<String> = graph.output.iter().map(|o| o.name().to_string()).collect();
        let measured = outputs::measured(pipeline_class, &name, graph)?;
        Ok(Encoder {
            tokenizer: tokenizer_folder(pipeline, &name),
            name,
            class,
            files: m.files(),
            file_bytes: m.file_bytes()?,
            model,
            params,
            param_bytes,
            outputs,
            measured,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoder(name: &str, param_bytes: u64) -> Encoder {
        Encoder {
            name: name.into(),
            class: None,
            model: PathBuf::from(name).join(MODEL_FILE),
            files: vec![],
            file_bytes: param_bytes,
            params: param_bytes / 4,
            param_bytes,
            outputs: vec!["last_hidden_state".into()],
            tokenizer: TokenizerFolder::Missing {
                folder: PathBuf::new(),
            },
            measured: Measured {
                output: "last_hidden_state".into(),
                reason: String::new(),
                warning: None,
            },
        }
    }

    fn pipeline(encoders: Vec<Encoder>) -> Pipeline {
        Pipeline {
            folder: PathBuf::from("sd3"),
            class: "StableDiffusion3Pipeline".into(),
            encoders,
            without_model: vec!["text_encoder_4".into()],
            unreadable: vec![Unreadable {
                name: "text_encoder_5".into(),
                error: "text_encoder_5/model.onnx: not a valid ONNX model".into(),
            }],
        }
    }

    #[test]
    fn the_default_is_the_largest_encoder_by_weight_bytes() {
        // SD3's sizes in fp16: CLIP-L, CLIP-G, T5-XXL.
        let p = pipeline(vec![
            encoder("text_encoder", 246_000_000),
            encoder("text_encoder_2", 1_390_000_000),
            encoder("text_encoder_3", 9_520_000_000),
        ]);
        assert_eq!(p.default_encoder().name, "text_encoder_3");
        assert_eq!(p.choose(&[]).unwrap()[0].name, "text_encoder_3");
        // Whatever its place or name: FLUX's T5 is text_encoder_2.
        let p = pipeline(vec![
            encoder("text_encoder", 246_000_000),
            encoder("text_encoder_2", 9_520_000_000),
        ]);
        assert_eq!(p.default_encoder().name, "text_encoder_2");
        // A tie goes to the first.
        let p = pipeline(vec![
            encoder("text_encoder", 8),
            encoder("text_encoder_2", 8),
        ]);
        assert_eq!(p.default_encoder().name, "text_encoder");
    }

    #[test]
    fn named_encoders_are_chosen_in_order_once_and_unknown_ones_refused() {
        let p = pipeline(vec![
            encoder("text_encoder", 1),
            encoder("text_encoder_2", 2),
            encoder("text_encoder_3", 3),
        ]);
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let chosen = p
            .choose(&names(&[
                "text_encoder_2",
                "text_encoder",
                "text_encoder_2",
            ]))
            .unwrap();
        let got: Vec<&str> = chosen.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(got, ["text_encoder_2", "text_encoder"]);

        let err = p.choose(&names(&["transformer"])).unwrap_err();
        assert_eq!(crate::error::exit_code_of(&err), crate::error::exit::USAGE);
        assert!(
            err.to_string()
                .contains("its text encoders are text_encoder, text_encoder_2, text_encoder_3"),
            "{err}"
        );
        let err = p.choose(&names(&["text_encoder_4"])).unwrap_err();
        assert!(
            err.to_string()
                .contains("text_encoder_4/ holds no model.onnx"),
            "{err}"
        );
        let err = p.choose(&names(&["text_encoder_5"])).unwrap_err();
        assert_eq!(
            crate::error::exit_code_of(&err),
            crate::error::exit::BAD_MODEL
        );
        assert!(err.to_string().contains("not a valid ONNX model"), "{err}");
    }

    #[test]
    fn each_encoder_pairs_with_its_own_tokenizer_folder() {
        assert_eq!(tokenizer_name("text_encoder"), "tokenizer");
        assert_eq!(tokenizer_name("text_encoder_2"), "tokenizer_2");
        assert_eq!(tokenizer_name("text_encoder_3"), "tokenizer_3");

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        for d in ["tokenizer", "tokenizer_2", "tokenizer_3"] {
            std::fs::create_dir(p.join(d)).unwrap();
        }
        std::fs::write(p.join("tokenizer/tokenizer.json"), "{}").unwrap();
        // A slow CLIPTokenizer as diffusers saves it: no tokenizer.json.
        std::fs::write(p.join("tokenizer_2/vocab.json"), "{}").unwrap();
        std::fs::write(p.join("tokenizer_2/merges.txt"), "").unwrap();
        std::fs::write(p.join("tokenizer_3/tokenizer.json"), "{}").unwrap();
        assert_eq!(
            tokenizer_folder(p, "text_encoder"),
            TokenizerFolder::Found {
                file: p.join("tokenizer/tokenizer.json")
            }
        );
        assert_eq!(
            tokenizer_folder(p, "text_encoder_2"),
            TokenizerFolder::SlowOnly {
                folder: p.join("tokenizer_2")
            }
        );
        assert_eq!(
            tokenizer_folder(p, "text_encoder_3").file(),
            Some(p.join("tokenizer_3/tokenizer.json").as_path())
        );
        assert_eq!(
            tokenizer_folder(p, "text_encoder_4"),
            TokenizerFolder::Missing {
                folder: p.join("tokenizer_4")
            }
        );
    }

    #[test]
    fn text_encoder_names_and_their_order() {
        for yes in ["text_encoder", "text_encoder_2", "text_encoder_10"] {
            assert!(is_text_encoder(yes), "{yes}");
        }
        for no in [
            "text_encoder_",
            "text_encoder_x",
            "text_encoder2",
            "tokenizer",
            "unet",
        ] {
            assert!(!is_text_encoder(no), "{no}");
        }
        let mut names = vec!["text_encoder_10", "text_encoder_2", "text_encoder"];
        names.sort_by_key(|n| encoder_order(n));
        assert_eq!(names, ["text_encoder", "text_encoder_2", "text_encoder_10"]);
    }

    #[test]
    fn model_index_components_listed_and_unlisted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(MODEL_INDEX),
            r#"{"_class_name": "StableDiffusion3Pipeline", "_diffusers_version": "0.31.0",
                "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
                "text_encoder_3": [null, null], "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}"#,
        )
        .unwrap();
        let (class, components) = read_index(dir.path()).unwrap();
        assert_eq!(class, "StableDiffusion3Pipeline");
        assert_eq!(
            components.get("text_encoder"),
            Some(&Some("CLIPTextModelWithProjection".to_string()))
        );
        assert!(!components.contains_key("text_encoder_3"));
        assert!(!components.contains_key("_diffusers_version"));

        std::fs::write(dir.path().join(MODEL_INDEX), r#"{"text_encoder": []}"#).unwrap();
        let err = read_index(dir.path()).unwrap_err();
        assert_eq!(
            crate::error::exit_code_of(&err),
            crate::error::exit::BAD_MODEL
        );
        assert!(err.to_string().contains("_class_name"), "{err}");
    }
}
