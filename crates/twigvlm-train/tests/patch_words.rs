//! Stage 1 by regression on the tiny llava-hf fixture: the projector's distance to the patches'
//! word embeddings falls, the language model is not touched, and the metrics are reported.

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use twigvlm_backbone::{load_llava, LoadOptions};
use twigvlm_data::{SceneConfig, ShapesDataset, TaskMix};
use twigvlm_train::examples::VisualInput;
use twigvlm_train::patch_words::PatchWordsObjective;
use twigvlm_train::trainable::trainable;
use twigvlm_train::{train, LrSchedule, OptimizerConfig, TrainOptions};

type B = Autodiff<Flex>;

#[test]
fn the_projector_moves_towards_the_patch_words() {
    let device = Default::default();
    let loaded = load_llava::<B>(&twigvlm_testkit::tiny_llava(), &LoadOptions::default(), &device).unwrap();
    let mut data = ShapesDataset::new(7, 64, TaskMix::short());
    data.scene = SceneConfig { grid: 4, cell_px: 14, objects: 1..=3 };
    let mut eval = data.clone();
    (eval.seed, eval.len) = (twigvlm_data::EVAL_SEED_START, 4);
    let visual = VisualInput {
        vision: loaded.model.vision_tower.valid(),
        feature_select: loaded.config.feature_select,
        preprocessor: loaded.preprocessor,
    };
    let embeddings = loaded.model.language_model.embed_tokens.weight.val().inner();
    let mut objective =
        PatchWordsObjective::<B>::new(visual, embeddings, &loaded.tokenizer, data, eval, 8, device).unwrap();
    let dir = twigvlm_testkit::temp_dir("patch-words");
    let options = TrainOptions {
        steps: 40,
        schedule: LrSchedule::warmup_cosine(1e-2, 40, 0.1),
        optimizer: OptimizerConfig::default(),
        checkpoint_every: 1000,
        eval_every: None,
        log_every: 10,
        out_dir: dir.path().to_path_buf(),
        resume: false,
        show_progress: false,
        time_limit: None,
    };
    let (_, report) = train(&mut objective, trainable(loaded.model.projector.clone()), &options, &device).unwrap();
    let (first, last) = (report.history.first().unwrap().loss, report.history.last().unwrap().loss);
    eprintln!("loss {first:.5} -> {last:.5}");
    assert!(last < 0.5 * first, "the regression loss must halve: {first} -> {last}");
    let names: Vec<&str> = report.history.last().unwrap().eval.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["object_word_acc", "position_word_acc"]);
}
