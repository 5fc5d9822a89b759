//! Which output of each text encoder a pipeline feeds its denoiser, so that D and the fidelity
//! check measure what the images depend on. A pipeline class reads a fixed output of each of
//! its encoders; the table below is read from diffusers' own code (the `encode_prompt` helpers
//! of each pipeline in `src/diffusers/pipelines/`), and the name of that output in an ONNX export
//! is Optimum's (`last_hidden_state`, `hidden_states.0` .. `hidden_states.L`, `text_embeds`,
//! `pooler_output`; see fixtures/optimum_clip_proj).

use serde::Serialize;

use crate::onnx::GraphProto;

/// What a pipeline reads from one text encoder.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reads {
    /// `text_encoder(ids)[0]`: the last hidden state.
    Last,
    /// `text_encoder(ids, output_hidden_states=True).hidden_states[-2]`: the stream after the
    /// penultimate layer. SDXL and SD3 also take the pooled output of the same call; one output
    /// is measured per run, and the per-token one is the larger share of the conditioning.
    Penultimate,
    /// `text_encoder(ids).pooler_output` (the projected `text_embeds` of
    /// CLIPTextModelWithProjection).
    Pooled,
}

/// A family of pipeline classes that encode prompts with the same code.
struct Family {
    classes: &'static [&'static str],
    encoders: &'static [(&'static str, Reads)],
}

/// diffusers, `src/diffusers/pipelines/…` (read at commit 58eb52c0 of huggingface/diffusers):
/// - `stable_diffusion/pipeline_stable_diffusion.py` `encode_prompt` (img2img, inpaint and
///   `latent_consistency_models/` alike): `prompt_embeds = self.text_encoder(...)[0]` (without
///   `clip_skip`);
/// - `stable_diffusion_xl/pipeline_stable_diffusion_xl.py` `encode_prompt`: both encoders
///   `text_encoder(..., output_hidden_states=True)`, `prompt_embeds.hidden_states[-2]`, the
///   pooled `prompt_embeds[0]` of the last one too;
/// - `stable_diffusion_3/pipeline_stable_diffusion_3.py`: `_get_clip_prompt_embeds`
///   `hidden_states[-(clip_skip + 2)]` with `clip_skip` None = `hidden_states[-2]` (and the
///   pooled `prompt_embeds[0]`) for `text_encoder` and `text_encoder_2`; `_get_t5_prompt_embeds`
///   `self.text_encoder_3(ids)[0]`, the last hidden state, padded to 256 tokens;
/// - `flux/pipeline_flux.py`: `_get_clip_prompt_embeds` `prompt_embeds.pooler_output` of
///   `text_encoder`; `_get_t5_prompt_embeds` `self.text_encoder_2(...)[0]`, padded to 512;
/// - `pixart_alpha/pipeline_pixart_alpha.py`, `pipeline_pixart_sigma.py` and
///   `sana/pipeline_sana.py`: `self.text_encoder(ids, attention_mask=...)[0]`.
const FAMILIES: &[Family] = &[
    Family {
        classes: &[
            "StableDiffusionPipeline",
            "StableDiffusionImg2ImgPipeline",
            "StableDiffusionInpaintPipeline",
            "LatentConsistencyModelPipeline",
            "LatentConsistencyModelImg2ImgPipeline",
        ],
        encoders: &[("text_encoder", Reads::Last)],
    },
    Family {
        classes: &[
            "StableDiffusionXLPipeline",
            "StableDiffusionXLImg2ImgPipeline",
            "StableDiffusionXLInpaintPipeline",
        ],
        encoders: &[
            ("text_encoder", Reads::Penultimate),
            ("text_encoder_2", Reads::Penultimate),
        ],
    },
    Family {
        classes: &[
            "StableDiffusion3Pipeline",
            "StableDiffusion3Img2ImgPipeline",
            "StableDiffusion3InpaintPipeline",
        ],
        encoders: &[
            ("text_encoder", Reads::Penultimate),
            ("text_encoder_2", Reads::Penultimate),
            ("text_encoder_3", Reads::Last),
        ],
    },
    Family {
        classes: &["FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline"],
        encoders: &[
            ("text_encoder", Reads::Pooled),
            ("text_encoder_2", Reads::Last),
        ],
    },
    Family {
        classes: &["PixArtAlphaPipeline", "PixArtSigmaPipeline", "SanaPipeline"],
        encoders: &[("text_encoder", Reads::Last)],
    },
];

/// What `pipeline_class` reads from its `encoder`: `None` for a class or an encoder the table
/// does not know. Optimum's ONNX pipelines (`ORTStableDiffusion3Pipeline`) and diffusers' own
/// (`OnnxStableDiffusionPipeline`) encode prompts as the class they wrap.
pub fn reads(pipeline_class: &str, encoder: &str) -> Option<Reads> {
    let class = pipeline_class
        .strip_prefix("ORT")
        .or_else(|| pipeline_class.strip_prefix("Onnx"))
        .unwrap_or(pipeline_class);
    let family = FAMILIES.iter().find(|f| f.classes.contains(&class))?;
    family
        .encoders
        .iter()
        .find(|(name, _)| *name == encoder)
        .map(|&(_, r)| r)
}

/// The output measured for one encoder, and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Measured {
    pub output: String,
    /// What the pipeline reads and where that is in the export, or why the default was taken.
    pub reason: String,
    /// Set when the measured output is not the one the pipeline reads (not exported, or an
    /// unknown pipeline): the report and the log say so.
    pub warning: Option<String>,
}

/// `hidden_states.N` outputs of an Optimum export with output_hidden_states: N = 0 is the
/// embeddings, N = L the last layer's output.
fn hidden_state_indices(outputs: &[&str]) -> Vec<u32> {
    outputs
        .iter()
        .filter_map(|o| o.strip_prefix("hidden_states.")?.parse().ok())
        .collect()
}

/// The output `graph` should be measured on inside a `pipeline_class` pipeline as `encoder`.
/// When the export lacks what the pipeline reads, the default output is measured and a
/// warning says what is missing: refusing would leave such exports unprunable, and the last
/// hidden state is the nearest thing there is.
pub fn measured(
    pipeline_class: &str,
    encoder: &str,
    graph: &GraphProto,
) -> anyhow::Result<Measured> {
    let outputs: Vec<&str> = graph.output.iter().map(|o| o.name()).collect();
    let default = crate::graph::measured_output(graph, None)?;
    let fallback = |warning: String| Measured {
        output: default.clone(),
        reason: "the default output".into(),
        warning: Some(warning),
    };
    let Some(wanted) = reads(pipeline_class, encoder) else {
        return Ok(fallback(format!(
            "{pipeline_class} is not a pipeline skrr-onnx knows the text encoder outputs of \
             ({encoder}): measuring {default}; check that it is what the pipeline reads, or \
             choose with --encoder {encoder} --measure OUTPUT"
        )));
    };
    let found = |output: String, reason: String| Measured {
        output,
        reason,
        warning: None,
    };
    Ok(match wanted {
        Reads::Last => match outputs.contains(&"last_hidden_state") {
            true => found(
                "last_hidden_state".into(),
                format!("{pipeline_class} reads its last hidden state"),
            ),
            false => fallback(format!(
                "{pipeline_class} reads the last hidden state of {encoder}, which its export \
                 does not name last_hidden_state: measuring {default}"
            )),
        },
        Reads::Penultimate => match hidden_state_indices(&outputs).into_iter().max() {
            Some(last) if last >= 1 => found(
                format!("hidden_states.{}", last - 1),
                format!("{pipeline_class} reads its penultimate hidden state (hidden_states[-2])"),
            ),
            _ => fallback(format!(
                "{pipeline_class} reads the penultimate hidden state of {encoder} \
                 (hidden_states[-2]), which its export does not output (Optimum exports it, as \
                 hidden_states.N, for SDXL and SD3): measuring {default}"
            )),
        },
        Reads::Pooled => match ["text_embeds", "pooler_output"]
            .into_iter()
            .find(|o| outputs.contains(o))
        {
            Some(o) => found(
                o.into(),
                format!("{pipeline_class} reads its pooled embedding"),
            ),
            None => fallback(format!(
                "{pipeline_class} reads the pooled embedding of {encoder}, which its export does \
                 not output (text_embeds or pooler_output): measuring {default}"
            )),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::ValueInfoProto;

    fn graph(outputs: &[&str]) -> GraphProto {
        GraphProto {
            output: outputs
                .iter()
                .map(|o| ValueInfoProto {
                    name: Some(o.to_string()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    /// fixtures/optimum_clip_proj: a 4-layer CLIPTextModelWithProjection with hidden states.
    const CLIP_PROJ: &[&str] = &[
        "text_embeds",
        "last_hidden_state",
        "hidden_states.0",
        "hidden_states.1",
        "hidden_states.2",
        "hidden_states.3",
        "hidden_states.4",
    ];
    /// fixtures/optimum_clip (SD 1.x's text_encoder): no hidden states.
    const CLIP: &[&str] = &["last_hidden_state", "pooler_output"];
    const T5: &[&str] = &["last_hidden_state"];

    fn output(class: &str, encoder: &str, outputs: &[&str]) -> Measured {
        measured(class, encoder, &graph(outputs)).unwrap()
    }

    #[test]
    fn the_table_reads_diffusers_encode_prompt() {
        use Reads::*;
        for (class, encoder, want) in [
            ("StableDiffusionPipeline", "text_encoder", Some(Last)),
            (
                "StableDiffusionXLPipeline",
                "text_encoder",
                Some(Penultimate),
            ),
            (
                "StableDiffusionXLImg2ImgPipeline",
                "text_encoder_2",
                Some(Penultimate),
            ),
            (
                "StableDiffusion3Pipeline",
                "text_encoder",
                Some(Penultimate),
            ),
            (
                "StableDiffusion3Pipeline",
                "text_encoder_2",
                Some(Penultimate),
            ),
            ("StableDiffusion3Pipeline", "text_encoder_3", Some(Last)),
            ("FluxPipeline", "text_encoder", Some(Pooled)),
            ("FluxPipeline", "text_encoder_2", Some(Last)),
            ("PixArtSigmaPipeline", "text_encoder", Some(Last)),
            // Optimum's and diffusers' ONNX pipeline classes read as the class they wrap.
            ("ORTStableDiffusion3Pipeline", "text_encoder_3", Some(Last)),
            ("OnnxStableDiffusionPipeline", "text_encoder", Some(Last)),
            ("StableDiffusion3Pipeline", "text_encoder_4", None),
            ("KandinskyPipeline", "text_encoder", None),
        ] {
            assert_eq!(reads(class, encoder), want, "{class} {encoder}");
        }
    }

    #[test]
    fn outputs_chosen_in_optimum_exports() {
        // SD3 and SDXL read hidden_states[-2]: the 4-layer export's hidden_states.3.
        let m = output("StableDiffusion3Pipeline", "text_encoder", CLIP_PROJ);
        assert_eq!(m.output, "hidden_states.3");
        assert_eq!(m.warning, None);
        assert!(m.reason.contains("penultimate"), "{}", m.reason);
        assert_eq!(
            output("StableDiffusionXLPipeline", "text_encoder_2", CLIP_PROJ).output,
            "hidden_states.3"
        );
        assert_eq!(
            output("StableDiffusion3Pipeline", "text_encoder_3", T5).output,
            "last_hidden_state"
        );
        // FLUX's CLIP: the pooled output, whichever name the export class gives it.
        assert_eq!(
            output("FluxPipeline", "text_encoder", CLIP).output,
            "pooler_output"
        );
        assert_eq!(
            output("FluxPipeline", "text_encoder", CLIP_PROJ).output,
            "text_embeds"
        );
        assert_eq!(
            output("FluxPipeline", "text_encoder_2", T5).output,
            "last_hidden_state"
        );
        assert_eq!(
            output("StableDiffusionPipeline", "text_encoder", CLIP).output,
            "last_hidden_state"
        );
    }

    #[test]
    fn what_is_not_exported_or_not_known_falls_back_with_a_warning() {
        // A CLIP exported without hidden states inside SDXL.
        let m = output("StableDiffusionXLPipeline", "text_encoder", CLIP);
        assert_eq!(m.output, "last_hidden_state");
        let w = m.warning.unwrap();
        assert!(
            w.contains("hidden_states[-2]") && w.contains("does not output"),
            "{w}"
        );
        // A T5 with no pooled output asked for the pooled one (a mislabelled folder).
        let m = output("FluxPipeline", "text_encoder", T5);
        assert_eq!(m.output, "last_hidden_state");
        assert!(m.warning.unwrap().contains("pooled"));
        // An unknown pipeline: the main job's default, the first output without a
        // last_hidden_state.
        let m = output("KandinskyPipeline", "text_encoder", &["pooled", "hidden"]);
        assert_eq!(m.output, "pooled");
        assert!(m.warning.unwrap().contains("--measure OUTPUT"));
    }
}
