//! Twig training on the tiny llava-hf fixture: only the twig gets gradients and changes, the base
//! stays bit-identical, and the loss on a fixed batch falls, with both kinds of targets; with
//! frozen MLPs those stay the base layers' copies too.

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Module};
use burn::optim::GradientsParams;
use twigvlm_backbone::weights::hf_tensors;
use twigvlm_backbone::{load_llava, LoadOptions};
use twigvlm_data::{Dataset, SceneConfig, ShapesDataset, TaskMix};
use twigvlm_train::examples::ConversationEncoder;
use twigvlm_train::twig::{TwigObjective, TwigTargets};
use twigvlm_train::{train, LrSchedule, Objective, OptimizerConfig, TrainOptions};
use twigvlm_twig::{Twig, TwigConfig, TwigMlp};

type B = Autodiff<Flex>;

fn flat<M: Module<Flex>>(module: &M) -> Vec<f32> {
    hf_tensors(module, &|p| p.to_string()).into_iter().flat_map(|t| t.2).collect()
}

fn data(seed: u64) -> Dataset {
    let mut data = ShapesDataset::new(seed, 2, TaskMix::short());
    data.scene = SceneConfig { grid: 4, cell_px: 14, objects: 1..=3 };
    Dataset::Shapes(data)
}

/// A twig block's MLP tensors, by name.
fn mlp_values(twig: &Twig<Flex>) -> Vec<(String, Vec<f32>)> {
    hf_tensors(twig, &|p| p.to_string())
        .into_iter()
        .filter(|(name, _, _)| name.contains(".mlp."))
        .map(|(n, _, v)| (n, v))
        .collect()
}

/// Ten steps at lr 1e-2 on a fixed batch, no evaluation or checkpoint on the way.
fn ten_steps(out: &std::path::Path) -> TrainOptions {
    TrainOptions {
        steps: 10,
        schedule: LrSchedule::warmup_cosine(1e-2, 10, 0.1),
        optimizer: OptimizerConfig::default(),
        checkpoint_every: 1000,
        eval_every: None,
        log_every: 2,
        out_dir: out.to_path_buf(),
        resume: false,
        show_progress: false,
        time_limit: None,
    }
}

fn run(targets: TwigTargets, mlp: TwigMlp) {
    let dir = twigvlm_testkit::tiny_llava();
    let device = Default::default();
    let loaded = load_llava::<Flex>(&dir, &LoadOptions::default(), &device).unwrap();
    let base_before = flat(&loaded.model);
    let config = TwigConfig { mlp, ..TwigConfig::new(1, 2) };
    let twig = Twig::<Flex>::init(&loaded.model.language_model, &loaded.config.text, config, &device).unwrap();
    let twig = twigvlm_train::twig::trainable_twig(Twig::<B>::from_inner(twig));
    let encoder = ConversationEncoder { tokenizer: loaded.tokenizer, template: loaded.template, system: None };
    let datasets = (data(7), data(twigvlm_data::EVAL_SEED_START));
    let mut objective =
        TwigObjective::<B>::new(loaded.model, loaded.preprocessor, encoder, targets, datasets, 2, device);

    let (loss, _) = objective.loss(&twig, 0).unwrap();
    let grads = GradientsParams::from_grads(loss.backward(), &twig);
    let twig_tensors = hf_tensors(&twig.valid(), &|p| p.to_string()).len();
    let frozen = match mlp {
        TwigMlp::Trained => 0,
        TwigMlp::Frozen => mlp_values(&twig.valid()).len(),
    };
    assert_eq!(grads.len(), twig_tensors - frozen, "every trained twig tensor and nothing else has a gradient");

    let twig_before = flat(&twig.valid());
    let mlp_before = mlp_values(&twig.valid());
    let out = twigvlm_testkit::temp_dir(&format!("twig-train-{targets:?}-{mlp:?}"));
    let options = ten_steps(out.path());
    let (twig, report) = train(&mut objective, twig, &options, &device).unwrap();
    let (first, last) = (report.history.first().unwrap().loss, report.history.last().unwrap().loss);
    eprintln!("{targets:?}: loss {first:.3} -> {last:.3}");
    assert!(last < 0.7 * first, "the loss on a fixed batch must fall by 30%: {first} -> {last}");
    assert_ne!(flat(&twig.valid()), twig_before, "the twig trains");
    let mlp_after = mlp_values(&twig.valid());
    match mlp {
        TwigMlp::Trained => assert_ne!(mlp_after, mlp_before, "trained MLPs change"),
        TwigMlp::Frozen => assert_eq!(mlp_after, mlp_before, "frozen MLPs stay the base layers' copies"),
    }
    let metrics = objective.evaluate(&twig).unwrap();
    assert_eq!(metrics[0].0, "agreement");
    assert!((0.0..=1.0).contains(&metrics[0].1));
    let base_after =
        [flat(&objective.visual.vision), flat(&objective.projector), flat(&objective.language_model)].concat();
    assert_eq!(base_after, base_before, "the base must stay bit-identical");
}

#[test]
fn twig_trains_on_dataset_answers() {
    run(TwigTargets::Data, TwigMlp::Trained);
}

#[test]
fn twig_with_frozen_mlps_trains_the_rest() {
    run(TwigTargets::Data, TwigMlp::Frozen);
}

#[test]
fn twig_trains_on_the_base_models_own_predictions() {
    run(TwigTargets::Base, TwigMlp::Trained);
}

/// The attention term: zero for the base layer an adjacent twig's last block copies (exact check
/// of the wiring: same query, same visual tokens, same head mean), positive for another layer,
/// and training with it brings the twig's selection attention toward that layer's.
#[test]
fn attention_distillation_is_zero_for_the_copied_layer_and_pulls_toward_another() {
    use twigvlm_train::twig::AttentionDistill;
    let dir = twigvlm_testkit::tiny_llava();
    let device = Default::default();
    let objective_with = |teacher_layer: usize| {
        let loaded = load_llava::<Flex>(&dir, &LoadOptions::default(), &device).unwrap();
        let config = TwigConfig { mlp: TwigMlp::Frozen, ..TwigConfig::new(1, 2) };
        let twig = Twig::<Flex>::init(&loaded.model.language_model, &loaded.config.text, config, &device).unwrap();
        let twig = twigvlm_train::twig::trainable_twig(Twig::<B>::from_inner(twig));
        let encoder = ConversationEncoder { tokenizer: loaded.tokenizer, template: loaded.template, system: None };
        let datasets = (data(7), data(twigvlm_data::EVAL_SEED_START));
        let objective =
            TwigObjective::<B>::new(loaded.model, loaded.preprocessor, encoder, TwigTargets::Base, datasets, 2, device)
                .with_attention_distill(AttentionDistill { teacher_layer, weight: 10.0 });
        (objective, twig)
    };
    // The fixture has 4 layers.
    let error = objective_with(4).0.err().expect("a teacher layer beyond the base model").to_string();
    assert!(error.contains("layer 5") && error.contains("has 4"), "{error}");
    let kl = |objective: &mut TwigObjective<B>, twig: &Twig<B>| {
        let metrics = objective.evaluate(twig).unwrap();
        metrics.iter().find(|(name, _)| name == "attention_kl").expect("an attention_kl metric").1
    };

    // K = 1, T = 2: the last block starts as base layer 2 (0-based).
    let (copied, twig) = objective_with(2);
    let mut copied = copied.unwrap();
    let at_copy = kl(&mut copied, &twig);
    assert!(at_copy.abs() < 1e-5, "the adjacent twig attends exactly as the layer it copies: KL {at_copy}");

    let (other, twig) = objective_with(3);
    let mut other = other.unwrap();
    let before = kl(&mut other, &twig);
    assert!(before > 1e-3, "another layer attends differently: KL {before}");
    let out = twigvlm_testkit::temp_dir("twig-attention");
    let options = ten_steps(out.path());
    let (twig, _) = train(&mut other, twig, &options, &device).unwrap();
    let after = kl(&mut other, &twig);
    eprintln!("attention KL toward layer 3: {before:.4} -> {after:.4}");
    assert!(after < 0.5 * before, "training with the attention term halves the divergence: {before} -> {after}");
}
