//! CLIP's text encoder (transformers `CLIPTextModel`): prompt token ids to the hidden states
//! the UNet attends to.
//!
//! Token and position embeddings, a stack of pre-norm transformer layers with causal
//! self-attention, and a final layer norm. SD 1.x uses OpenAI's CLIP ViT-L/14 (`quick_gelu`);
//! SD 2.x uses OpenCLIP ViT-H/14 converted to this layout (`gelu`). The pooled output (the
//! state at the end-of-text token, projected when the model is a
//! `CLIPTextModelWithProjection`) is what SDXL's second encoder adds to the conditioning.
//!
//! Weight files name the tensors in one of two layouts, told apart by the tensor names:
//! `text_model.embeddings.…` (transformers 4, and `CLIPTextModelWithProjection` in both) or
//! `embeddings.…` at the top (a `CLIPTextModel` built and saved by transformers 5).

use crate::loading::weights::MapGuard;
use crate::loading::{read_json, Weights};
use crate::models::nn::{attention, LayerNorm, Linear};
use crate::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// The MLP activations CLIP text encoders use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)`, OpenAI CLIP.
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// Exact (erf) GELU, OpenCLIP.
    #[serde(rename = "gelu")]
    Gelu,
}

/// The fields of `text_encoder/config.json` the model needs; the rest are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ClipTextConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: usize,
    pub num_attention_heads: i64,
    pub max_position_embeddings: i64,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    /// Picks the pooled token: the first of these ids, or with transformers' legacy value 2
    /// (old configs, SD 1.5's among them) the largest id, which is CLIP's end-of-text token.
    #[serde(default = "default_eos_token_id")]
    pub eos_token_id: i64,
    /// Width of `text_projection`, for models that have one.
    #[serde(default = "default_projection_dim")]
    pub projection_dim: i64,
}

/// transformers' `CLIPTextConfig` defaults, for configs that omit the fields.
fn default_eos_token_id() -> i64 {
    2
}

fn default_projection_dim() -> i64 {
    512
}

/// What the text encoder computes for a batch of token ids.
#[derive(Debug)]
pub struct TextEncoderOutput {
    /// `[batch, seq, hidden]`: the states the UNet attends to, after `clip_skip`.
    pub hidden: Tensor,
    /// `[batch, hidden]`, or `[batch, projection_dim]` with a projection: the final layer's
    /// normed state at the end-of-text token (transformers' `pooler_output` / `text_embeds`).
    /// Always from the last layer, whatever `clip_skip` is, as in transformers.
    pub pooled: Tensor,
}

impl ClipTextConfig {
    /// Reads and checks `config.json`; errors name the file and the field.
    pub fn load(path: &Path) -> Result<ClipTextConfig> {
        let cfg: ClipTextConfig = read_json(path)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers as i64),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
            ("projection_dim", self.projection_dim),
        ];
        for (field, value) in positive {
            if value <= 0 {
                return Err(Error::config(path, format!("field '{field}': must be positive, found {value}")));
            }
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(Error::config(
                path,
                format!(
                    "field 'num_attention_heads': hidden_size {} is not divisible by {} heads",
                    self.hidden_size, self.num_attention_heads
                ),
            ));
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return Err(Error::config(
                path,
                format!("field 'layer_norm_eps': must be a small positive number, found {}", self.layer_norm_eps),
            ));
        }
        Ok(())
    }
}

#[derive(Debug)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl EncoderLayer {
    fn load(w: &Weights, cfg: &ClipTextConfig) -> Result<EncoderLayer> {
        let (h, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let attn = w.pp("self_attn");
        let mlp = w.pp("mlp");
        Ok(EncoderLayer {
            layer_norm1: LayerNorm::load(&w.pp("layer_norm1"), h, eps)?,
            q_proj: Linear::load(&attn.pp("q_proj"), h, h, true)?,
            k_proj: Linear::load(&attn.pp("k_proj"), h, h, true)?,
            v_proj: Linear::load(&attn.pp("v_proj"), h, h, true)?,
            out_proj: Linear::load(&attn.pp("out_proj"), h, h, true)?,
            layer_norm2: LayerNorm::load(&w.pp("layer_norm2"), h, eps)?,
            fc1: Linear::load(&mlp.pp("fc1"), h, cfg.intermediate_size, true)?,
            fc2: Linear::load(&mlp.pp("fc2"), cfg.intermediate_size, h, true)?,
        })
    }

    fn forward(&self, x: &Tensor, heads: i64, act: Activation) -> Tensor {
        let h = self.layer_norm1.forward(x);
        let (q, k, v) = (self.q_proj.forward(&h), self.k_proj.forward(&h), self.v_proj.forward(&h));
        // SDPA's default scale is head_dim^-0.5, CLIP's; causal so a token never sees later ones.
        let a = self.out_proj.forward(&attention(&q, &k, &v, heads, None, true));
        let x = x + a;
        let h = self.fc1.forward(&self.layer_norm2.forward(&x));
        let h = match act {
            Activation::QuickGelu => &h * (&h * 1.702).sigmoid(),
            Activation::Gelu => h.gelu("none"),
        };
        x + self.fc2.forward(&h)
    }
}

/// The tensor names that tell the two layouts apart.
const PREFIXED_KEY: &str = "text_model.embeddings.token_embedding.weight";
const BARE_KEY: &str = "embeddings.token_embedding.weight";

/// transformers' `CLIPTextModel`, or `CLIPTextModelWithProjection` when the weights hold
/// `text_projection.weight`.
#[derive(Debug)]
pub struct ClipTextModel {
    config: ClipTextConfig,
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    text_projection: Option<Linear>,
    /// Last: dropped after the tensors that may borrow the mapped weights.
    _map: MapGuard,
}

impl ClipTextModel {
    /// Every linear layer, by its transformers name (`text_model.encoder.layers.0.mlp.fc1`),
    /// for adapters.
    pub(crate) fn visit_layers(&mut self, f: &mut crate::models::layers::Visitor<'_>) {
        use crate::models::layers::linear;
        for (i, l) in self.layers.iter_mut().enumerate() {
            let p = format!("text_model.encoder.layers.{i}");
            linear(&p, "self_attn.q_proj", &mut l.q_proj, f);
            linear(&p, "self_attn.k_proj", &mut l.k_proj, f);
            linear(&p, "self_attn.v_proj", &mut l.v_proj, f);
            linear(&p, "self_attn.out_proj", &mut l.out_proj, f);
            linear(&p, "mlp.fc1", &mut l.fc1, f);
            linear(&p, "mlp.fc2", &mut l.fc2, f);
        }
        if let Some(t) = &mut self.text_projection {
            linear("", "text_projection", t, f);
        }
    }

    /// Loads a diffusers `text_encoder/` folder: `config.json` and `model.safetensors`
    /// (or `model.fp16.safetensors` when loading in fp16 and the plain file is absent).
    /// Tensors in the file that the config does not account for are an error.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<ClipTextModel> {
        let cfg = ClipTextConfig::load(&dir.join("config.json"))?;
        let path = weights_file(dir, kind)?;
        let w = Weights::open(&[path], device, kind)?;
        let model = ClipTextModel::new(&w, &cfg)?;
        w.finish()?;
        Ok(model)
    }

    /// Builds the model from tensors named as transformers 4 or 5 save them (see the file's
    /// header), with `text_projection.weight` when there is one. Does not call
    /// [`Weights::finish`]: the caller may share the store with other components.
    pub fn new(w: &Weights, cfg: &ClipTextConfig) -> Result<ClipTextModel> {
        let tm = if w.contains(PREFIXED_KEY) {
            w.pp("text_model")
        } else if w.contains(BARE_KEY) {
            w.clone()
        } else {
            return Err(Error::weights(
                w.file_label(),
                format!(
                    "not a CLIP text encoder: expected '{PREFIXED_KEY}' (transformers 4 layout, and \
                     CLIPTextModelWithProjection) or '{BARE_KEY}' (CLIPTextModel saved by transformers 5), \
                     found neither"
                ),
            ));
        };
        let emb = tm.pp("embeddings");
        let h = cfg.hidden_size;
        // A buffer saved by older transformers versions; it is always arange(max_positions),
        // so it is consumed (to satisfy `finish`) and not used.
        if let Some(shape) = emb.shape_of("position_ids") {
            let _unused_position_ids = emb.get("position_ids", &shape)?;
        }
        let layers_w = tm.pp("encoder").pp("layers");
        let layers =
            (0..cfg.num_hidden_layers).map(|i| EncoderLayer::load(&layers_w.pp(i), cfg)).collect::<Result<Vec<_>>>()?;
        Ok(ClipTextModel {
            config: cfg.clone(),
            token_embedding: emb.pp("token_embedding").get("weight", &[cfg.vocab_size, h])?,
            position_embedding: emb.pp("position_embedding").get("weight", &[cfg.max_position_embeddings, h])?,
            layers,
            final_layer_norm: LayerNorm::load(&tm.pp("final_layer_norm"), h, cfg.layer_norm_eps)?,
            // At the top in both layouts: it belongs to the wrapper, not to `text_model`.
            text_projection: if w.contains("text_projection.weight") {
                Some(Linear::load(&w.pp("text_projection"), h, cfg.projection_dim, false)?)
            } else {
                None
            },
            _map: w.map_guard(),
        })
    }

    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// Whether the weights had `text_projection` (a `CLIPTextModelWithProjection`).
    pub fn has_projection(&self) -> bool {
        self.text_projection.is_some()
    }

    /// The width of the token embeddings (what a textual-inversion vector must have).
    pub fn embedding_width(&self) -> i64 {
        self.config.hidden_size
    }

    /// Gives the tokens `ids` the embeddings `vectors` `[ids.len(), hidden]` (textual
    /// inversion), growing the token table when an id lies past its end, as transformers'
    /// `resize_token_embeddings`; rows between the old end and a new id are zeros, which no
    /// tokenizer id reaches. The table becomes a copy of its own: the loaded one may borrow
    /// the read-only weights file.
    pub fn set_token_embeddings(&mut self, ids: &[i64], vectors: &Tensor) -> Result<()> {
        let h = self.config.hidden_size;
        let size = vectors.size();
        if size != [ids.len() as i64, h] {
            return Err(Error::invalid(format!(
                "{} token embeddings of shape {size:?} do not fit this text encoder, whose tokens are {h} wide",
                ids.len()
            )));
        }
        let Some(&top) = ids.iter().max() else { return Ok(()) };
        if ids.iter().any(|&id| id < 0) {
            return Err(Error::invalid(format!("negative token id in {ids:?}")));
        }
        let table = &self.token_embedding;
        let rows = table.size()[0];
        let mut grown = if top >= rows {
            let extra = Tensor::f_zeros([top + 1 - rows, h], (table.kind(), table.device()))?;
            Tensor::f_cat(&[table, &extra], 0)?
        } else {
            let mut owned = table.f_empty_like()?;
            owned.f_copy_(table)?;
            owned
        };
        let index = Tensor::from_slice(ids).f_to_device(table.device())?;
        let values = vectors.f_to_device(table.device())?.f_to_kind(table.kind())?;
        grown = grown.f_index_copy(0, &index, &values)?;
        self.token_embedding = grown;
        Ok(())
    }

    /// Encodes token ids `[batch, seq]` (int64) into hidden states `[batch, seq, hidden]`
    /// and the pooled output (see [`TextEncoderOutput`]).
    ///
    /// `clip_skip` follows diffusers' `StableDiffusionPipeline.encode_prompt`: `None` returns
    /// `last_hidden_state` (all layers, then the final layer norm). `Some(n)` takes
    /// `hidden_states[-(n + 1)]` — the output of layer `num_layers - n`, where
    /// `hidden_states[0]` is the embeddings — and applies the final layer norm to it. So
    /// `Some(0)` equals `None`, `Some(1)` is the penultimate layer (A1111's "clip skip 2"),
    /// and `n` may be at most `num_hidden_layers`. The pooled output needs every layer, so
    /// all of them run whatever `clip_skip` is.
    pub fn forward(&self, ids: &Tensor, clip_skip: Option<usize>) -> Result<TextEncoderOutput> {
        let n_layers = self.layers.len();
        let run = match clip_skip {
            None => n_layers,
            Some(n) if n <= n_layers => n_layers - n,
            Some(n) => {
                return Err(Error::invalid(format!(
                    "clip skip {n} is larger than the text encoder's {n_layers} layers"
                )))
            }
        };
        let (last, state, pooled) = self.encode(ids, run)?;
        // `state` is hidden_states[run]; with nothing skipped it is the last layer's output.
        let hidden = if run == n_layers { last } else { self.final_layer_norm.forward(&state) };
        Ok(TextEncoderOutput { hidden, pooled })
    }

    /// Encodes token ids `[batch, seq]` and returns, as `hidden`, transformers'
    /// `hidden_states[-from_end]` as it is: without the final layer norm (SDXL's pipelines
    /// use `hidden_states[-2]`, the penultimate layer's raw output). `from_end` counts from 1
    /// (the last layer's output) to `num_hidden_layers + 1` (the embeddings). `pooled` is as in
    /// [`ClipTextModel::forward`].
    pub fn hidden_state(&self, ids: &Tensor, from_end: usize) -> Result<TextEncoderOutput> {
        let n_layers = self.layers.len();
        if from_end == 0 || from_end > n_layers + 1 {
            return Err(Error::invalid(format!(
                "the text encoder has {n_layers} layers, so it has no hidden state {from_end} from the end \
                 (clip skip too large?)"
            )));
        }
        let (_, hidden, pooled) = self.encode(ids, n_layers + 1 - from_end)?;
        Ok(TextEncoderOutput { hidden, pooled })
    }

    /// Runs every layer. Returns the final normed state, `hidden_states[take]` (0: the
    /// embeddings, `i`: layer `i`'s output) without the final norm, and the pooled output.
    fn encode(&self, ids: &Tensor, take: usize) -> Result<(Tensor, Tensor, Tensor)> {
        let size = ids.size();
        let &[_, seq] = size.as_slice() else {
            return Err(Error::Model(format!("text encoder expects token ids [batch, seq], got {size:?}")));
        };
        if seq > self.config.max_position_embeddings {
            return Err(Error::invalid(format!(
                "{seq} tokens exceed the text encoder's {} positions",
                self.config.max_position_embeddings
            )));
        }
        let ids = ids.f_to_device(self.token_embedding.device())?.f_to_kind(Kind::Int64)?;
        let tokens = Tensor::f_embedding(&self.token_embedding, &ids, -1, false, false)?;
        let mut x = tokens + self.position_embedding.narrow(0, 0, seq).unsqueeze(0);
        let mut taken = None;
        for (i, layer) in self.layers.iter().enumerate() {
            if i == take {
                taken = Some(x.shallow_clone());
            }
            x = layer.forward(&x, self.config.num_attention_heads, self.config.hidden_act);
        }
        let taken = taken.unwrap_or_else(|| x.shallow_clone());
        let last = self.final_layer_norm.forward(&x);
        let pooled = self.pool(&last, &ids)?;
        Ok((last, taken, pooled))
    }

    /// transformers' `CLIPTextTransformer` pooling: the state at the first `eos_token_id`,
    /// or at the largest id for legacy configs whose `eos_token_id` is 2; then the
    /// projection, when the model has one. A row without the token pools its first state, as
    /// `argmax` of an all-false row gives 0 there too.
    fn pool(&self, last: &Tensor, ids: &Tensor) -> Result<Tensor> {
        let eos = self.config.eos_token_id;
        let at = if eos == 2 {
            ids.f_argmax(-1, false)?
        } else {
            ids.f_eq(eos)?.f_to_kind(Kind::Int)?.f_argmax(-1, false)?
        };
        let rows = Tensor::f_arange(ids.size()[0], (Kind::Int64, ids.device()))?;
        let pooled = last.f_index(&[Some(rows), Some(at)])?;
        Ok(match &self.text_projection {
            Some(p) => p.forward(&pooled),
            None => pooled,
        })
    }
}

/// `model.safetensors`, or `model.fp16.safetensors` for fp16 loads when only that exists.
pub(crate) fn weights_file(dir: &Path, kind: Kind) -> Result<PathBuf> {
    let plain = dir.join("model.safetensors");
    if plain.is_file() {
        return Ok(plain);
    }
    let fp16 = dir.join("model.fp16.safetensors");
    if kind == Kind::Half && fp16.is_file() {
        return Ok(fp16);
    }
    let mut msg = format!("no model.safetensors in {}", dir.display());
    if fp16.is_file() {
        msg.push_str("; only model.fp16.safetensors is there, which is used only when running in fp16");
    } else if dir.join("pytorch_model.bin").is_file() {
        msg.push_str("; pytorch_model.bin is a Python pickle, which sdgen refuses: convert it to model.safetensors");
    }
    Err(Error::weights(dir, msg))
}
