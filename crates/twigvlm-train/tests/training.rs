//! The training loop on a tiny vision tower: the loss falls, a resumed run equals an uninterrupted
//! one, clipping and the schedule do what PyTorch's do, and trained modules export to HF names
//! that the inference loader reads back.

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Module};
use burn::optim::GradientsParams;
use burn::prelude::*;
use twigvlm_backbone::clip::ClipVisionTower;
use twigvlm_backbone::config::{Activation, ClipVisionConfig};
use twigvlm_backbone::weights::{hf_tensors, write_safetensors, StorageDtype, TensorSource, WeightLoader};
use twigvlm_backbone::ImagePreprocessor;
use twigvlm_data::{SceneConfig, ShapesDataset, TaskMix};
use twigvlm_train::clipping::clip_global_norm;
use twigvlm_train::vision::{PatchClassifier, VisionObjective};
use twigvlm_train::{train, LrSchedule, Objective, OptimizerConfig, TrainOptions};

type B = Autodiff<Flex>;

fn tiny_config() -> ClipVisionConfig {
    ClipVisionConfig {
        hidden_size: 32,
        intermediate_size: 64,
        num_layers: 2,
        num_heads: 2,
        num_channels: 3,
        image_size: 56,
        patch_size: 14,
        layer_norm_eps: 1e-5,
        activation: Activation::Gelu,
    }
}

fn tiny_data(seed: u64, len: usize) -> ShapesDataset {
    let mut data = ShapesDataset::new(seed, len, TaskMix::short());
    data.scene = SceneConfig { grid: 4, cell_px: 14, objects: 1..=3 };
    data
}

fn objective(batch: usize) -> VisionObjective<B> {
    let preprocessor = ImagePreprocessor::llava_default(56);
    VisionObjective::new(
        tiny_data(1, 4096),
        tiny_data(1_000_000, 32),
        preprocessor,
        &tiny_config(),
        batch,
        Default::default(),
    )
    .unwrap()
}

fn options(dir: &std::path::Path, steps: usize, total: usize) -> TrainOptions {
    TrainOptions {
        steps,
        schedule: LrSchedule::warmup_cosine(3e-3, total, 0.1),
        optimizer: OptimizerConfig { weight_decay: 0.01, ..OptimizerConfig::default() },
        checkpoint_every: 1000,
        eval_every: None,
        log_every: 5,
        out_dir: dir.to_path_buf(),
        resume: true,
        show_progress: false,
        time_limit: None,
    }
}

fn scratch(name: &str) -> twigvlm_testkit::TempDir {
    twigvlm_testkit::temp_dir(&format!("train-{name}"))
}

fn flat_params<M: Module<Flex>>(module: &M) -> Vec<f32> {
    hf_tensors(module, &|p| p.to_string()).into_iter().flat_map(|t| t.2).collect()
}

#[test]
fn loss_falls_on_a_tiny_tower() {
    let device = Default::default();
    <B as Backend>::seed(&device, 3);
    let dir = scratch("falls");
    let model = PatchClassifier::<B>::init(&tiny_config(), &device);
    let (_, report) = train(&mut objective(16), model, &options(dir.path(), 40, 40), &device).unwrap();
    let first = report.history.first().unwrap().loss;
    let last = report.history.last().unwrap().loss;
    eprintln!("loss {first:.3} -> {last:.3}");
    assert!(last < 0.6 * first, "loss must fall by 40% in 40 steps: {first} -> {last}");
}

#[test]
fn resumed_training_equals_uninterrupted_training() {
    // Flex splits reductions over rayon's pool as work-stealing decides, so float sums change
    // with the load of the tests running beside this one; Adam turns such rounding into ±lr steps
    // on near-zero gradients. On a one-thread pool every sum runs in one order.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    pool.install(resumed_training_equals_uninterrupted_training_in_order);
}

fn resumed_training_equals_uninterrupted_training_in_order() {
    let device = Default::default();
    <B as Backend>::seed(&device, 5);
    // burn initialises parameters lazily, on first use: clones of a fresh module would each draw
    // their own values. Materialise once so both runs start from the same parameters.
    let fresh = PatchClassifier::<B>::init(&tiny_config(), &device);
    let initial = fresh.clone().load_record(fresh.into_record());
    let straight_dir = scratch("straight");
    let (straight, _) =
        train(&mut objective(8), initial.clone(), &options(straight_dir.path(), 6, 6), &device).unwrap();

    let resumed_dir = scratch("resumed");
    train(&mut objective(8), initial.clone(), &options(resumed_dir.path(), 3, 6), &device).unwrap();
    // A fresh process would start from a new random model: the checkpoint must replace it entirely.
    let other = PatchClassifier::<B>::init(&tiny_config(), &device);
    let (resumed, report) = train(&mut objective(8), other, &options(resumed_dir.path(), 6, 6), &device).unwrap();
    assert_eq!(report.steps_done, 6);
    let (a, b) = (flat_params(&straight.valid()), flat_params(&resumed.valid()));
    let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(diff <= 1e-6, "resumed run differs by {diff}");
    assert_ne!(flat_params(&initial.valid()), a, "training changed the parameters");
}

#[test]
fn a_time_limit_fits_the_run_and_stops_it() {
    let device = Default::default();
    <B as Backend>::seed(&device, 7);
    let dir = scratch("time-limit");
    let model = PatchClassifier::<B>::init(&tiny_config(), &device);
    let mut limited = options(dir.path(), 10_000, 10_000);
    limited.time_limit = Some(std::time::Duration::ZERO);
    let (_, report) = train(&mut objective(4), model, &limited, &device).unwrap();
    assert_eq!((report.steps_done, report.fitted_steps), (1, Some(1)), "a spent budget stops after the step in flight");
    assert!(twigvlm_train::checkpoint::exists(dir.path()), "the stopped run is checkpointed");

    let generous = std::time::Duration::from_secs(3600);
    let dir2 = scratch("time-limit-generous");
    limited = options(dir2.path(), 20, 20);
    limited.time_limit = Some(generous);
    let model = PatchClassifier::<B>::init(&tiny_config(), &device);
    let (_, report) = train(&mut objective(4), model, &limited, &device).unwrap();
    assert_eq!(report.steps_done, 20, "a budget that suffices keeps --steps");
    assert_eq!(report.fitted_steps, Some(20), "the run measured its pace after the first steps and fitted its length");
}

struct Collect<'a> {
    grads: &'a GradientsParams,
    values: Vec<Vec<f32>>,
}

impl burn::module::ModuleVisitor<B> for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<Flex, D>(param.id) {
            self.values.push(g.into_data().into_vec::<f32>().unwrap());
        }
    }
}

fn collect(model: &PatchClassifier<B>, grads: &GradientsParams) -> Vec<Vec<f32>> {
    let mut visitor = Collect { grads, values: Vec::new() };
    model.visit(&mut visitor);
    visitor.values
}

#[test]
fn global_norm_clipping_scales_all_gradients_together() {
    let device = Default::default();
    <B as Backend>::seed(&device, 7);
    let model = PatchClassifier::<B>::init(&tiny_config(), &device);
    let (loss, _) = objective(4).loss(&model, 0).unwrap();
    let mut grads = GradientsParams::from_grads(loss.backward(), &model);
    let before = collect(&model, &grads);
    assert!(before.len() > 10, "every parameter has a gradient");
    let hand: f64 = before.iter().flatten().map(|g| (*g as f64).powi(2)).sum::<f64>().sqrt();
    let norm = clip_global_norm(&model, &mut grads, None);
    assert!((norm - hand).abs() < 1e-6 * hand, "{norm} vs {hand}");
    assert_eq!(collect(&model, &grads), before, "no clipping without a maximum");

    let max = (norm / 4.0) as f32;
    clip_global_norm(&model, &mut grads, Some(max));
    let after = collect(&model, &grads);
    let clipped: f64 = after.iter().flatten().map(|g| (*g as f64).powi(2)).sum::<f64>().sqrt();
    assert!((clipped - max as f64).abs() < 1e-4 * max as f64, "clipped norm {clipped}, wanted {max}");
    for (b, a) in before.iter().flatten().zip(after.iter().flatten()) {
        assert!((b * 0.25 - a).abs() <= 1e-5 * b.abs().max(1e-3), "every tensor scales by the same factor: {b} -> {a}");
    }
}

#[test]
fn schedule_warms_up_then_follows_the_cosine() {
    let s = LrSchedule::warmup_cosine(1e-3, 100, 0.03);
    assert_eq!(s.warmup_steps, 3);
    let expected_warmup = [1e-3 / 3.0, 2e-3 / 3.0, 1e-3];
    for (step, want) in expected_warmup.iter().enumerate() {
        assert!((s.at(step) - want).abs() < 1e-12, "step {step}: {}", s.at(step));
    }
    // Halfway through the decay the rate is half the peak; at the end it reaches the floor; no restart.
    assert!((s.at(3 + 97 / 2) - 5e-4).abs() < 2e-5);
    assert!(s.at(99) < 1e-6 && s.at(150) < 1e-6);
    assert!((0..99).all(|i| i < 2 || s.at(i + 1) <= s.at(i)), "monotone decay after warm-up");
}

#[test]
fn exported_tower_loads_back_through_the_inference_loader() {
    let device: <Flex as burn::tensor::backend::BackendTypes>::Device = Default::default();
    let cfg = tiny_config();
    Flex::seed(&device, 9);
    let tower = ClipVisionTower::<Flex>::init(&cfg, cfg.num_layers, &device);
    let tensors = hf_tensors(&tower, &|p| ClipVisionTower::<Flex>::hf_name("vision_tower.vision_model", p));
    assert!(tensors
        .iter()
        .any(|t| t.0 == "vision_tower.vision_model.encoder.layers.1.mlp.fc2.weight" && t.1 == vec![32, 64]));
    assert!(tensors.iter().any(|t| t.0 == "vision_tower.vision_model.pre_layrnorm.bias"));
    let dir = scratch("export");
    write_safetensors(&dir.path().join("model.safetensors"), &tensors, StorageDtype::F32).unwrap();
    let source = TensorSource::open_dir(dir.path()).unwrap();
    let loaded = ClipVisionTower::<Flex>::load(
        &WeightLoader::new(&source, &device),
        "vision_tower.vision_model",
        &cfg,
        cfg.num_layers,
    )
    .unwrap();
    let pixels = Tensor::<Flex, 4>::random([2, 3, 56, 56], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
    let (a, b) = (tower.forward(pixels.clone()), loaded.forward(pixels));
    let diff = (a - b).abs().max().into_scalar();
    assert!(diff < 1e-6, "{diff}");
}
