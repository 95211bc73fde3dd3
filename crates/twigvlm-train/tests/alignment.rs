//! LLaVA stages 1 and 2 on the tiny llava-hf fixture: only the projector and the tuned top layers
//! change, the loss on a fixed batch falls, and the tuned layers export under the language
//! model's own checkpoint names with the trained values.

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Module};
use burn::prelude::ElementConversion;
use twigvlm_backbone::weights::{hf_tensors, TensorSource};
use twigvlm_backbone::{load_llava, LoadOptions, LoadedLlava};
use twigvlm_data::{Conversation, Dataset, SceneConfig, ShapesDataset, TaskMix, Turn};
use twigvlm_testkit::tiny_llava;
use twigvlm_train::alignment::{AlignedParts, AlignmentObjective, SequencePadding, TunedLayerParts};
use twigvlm_train::examples::{ConversationEncoder, VisualInput};
use twigvlm_train::loss::TokenMeanLoss;
use twigvlm_train::{train, LrSchedule, Objective, OptimizerConfig, TrainOptions};

type B = Autodiff<Flex>;

fn flat<M: Module<Flex>>(module: &M) -> Vec<f32> {
    hf_tensors(module, &|p| p.to_string()).into_iter().flat_map(|t| t.2).collect()
}

fn flat_count<M: Module<Flex>>(module: &M) -> usize {
    hf_tensors(module, &|p| p.to_string()).len()
}

/// The fixture's frozen parts around a one-image training set (every step sees the same batch).
fn objective(
    loaded: LoadedLlava<B>,
    device: &<B as burn::tensor::backend::BackendTypes>::Device,
) -> AlignmentObjective<B> {
    let mut data = ShapesDataset::new(5, 2, TaskMix::short());
    data.scene = SceneConfig { grid: 4, cell_px: 14, objects: 1..=3 };
    data.turns_per_image = 2;
    let mut eval = data.clone();
    eval.seed = twigvlm_data::EVAL_SEED_START;
    AlignmentObjective {
        visual: VisualInput {
            vision: loaded.model.vision_tower.valid(),
            feature_select: loaded.config.feature_select,
            preprocessor: loaded.preprocessor,
        },
        language_model: loaded.model.language_model,
        encoder: ConversationEncoder { tokenizer: loaded.tokenizer, template: loaded.template, system: None },
        train: Dataset::Shapes(data),
        eval,
        batch_size: 2,
        freeze_projector: false,
        padding: SequencePadding::TIGHT,
        device: *device,
    }
}

/// The objective's shapes training data, to change its questions.
fn shapes(objective: &mut AlignmentObjective<B>) -> &mut ShapesDataset {
    match &mut objective.train {
        Dataset::Shapes(data) => data,
        other => panic!("the tests train on shapes data, not {other:?}"),
    }
}

#[test]
fn stage_two_trains_only_the_projector_and_the_tuned_layers() {
    let device = Default::default();
    let loaded = load_llava::<B>(&tiny_llava(), &LoadOptions::default(), &device).unwrap();
    let layers = loaded.model.language_model.num_layers();
    let frozen_before = flat(&loaded.model.language_model.valid());
    let projector_before = flat(&loaded.model.projector.valid());
    let top_before = flat(&loaded.model.language_model.layers[layers - 1].valid());
    let projector = twigvlm_train::trainable::trainable(loaded.model.projector.clone());
    let parts = AlignedParts::new(projector, &loaded.model.language_model, 1, TunedLayerParts::Whole).unwrap();
    assert_eq!(parts.first_tuned_layer, layers - 1);
    assert!(AlignedParts::new(
        parts.projector.clone(),
        &loaded.model.language_model,
        layers + 1,
        TunedLayerParts::Whole
    )
    .is_err());

    let mut objective = objective(loaded, &device);
    let dir = twigvlm_testkit::temp_dir("align");
    let options = TrainOptions {
        steps: 12,
        schedule: LrSchedule::warmup_cosine(1e-2, 12, 0.1),
        optimizer: OptimizerConfig::default(),
        checkpoint_every: 1000,
        eval_every: None,
        log_every: 2,
        out_dir: dir.path().to_path_buf(),
        resume: false,
        show_progress: false,
        time_limit: None,
    };
    let (parts, report) = train(&mut objective, parts, &options, &device).unwrap();
    let (first, last) = (report.history.first().unwrap().loss, report.history.last().unwrap().loss);
    eprintln!("loss {first:.3} -> {last:.3}");
    assert!(last < 0.7 * first, "the loss on a fixed batch must fall by 30%: {first} -> {last}");

    let parts = parts.valid();
    assert_eq!(flat(&objective.language_model.valid()), frozen_before, "the frozen language model must not change");
    assert_ne!(flat(&parts.projector), projector_before, "the projector trains");
    assert_ne!(flat(&parts.lm_layers[0]), top_before, "the tuned layer trains");

    // The tuned layer exports under the checkpoint's own names, with the trained values.
    let source = TensorSource::open_dir(&tiny_llava()).unwrap();
    let exported = parts.tuned_layer_tensors("model.language_model");
    let trained = hf_tensors(&parts.lm_layers[0], &|p| p.to_string());
    assert_eq!(exported.len(), trained.len());
    for ((name, shape, values), (_, _, expected)) in exported.iter().zip(&trained) {
        assert!(name.starts_with(&format!("model.language_model.layers.{}.", layers - 1)), "{name}");
        assert!(source.contains(name), "{name} is not a tensor of the checkpoint");
        assert_eq!(values, expected);
        assert!(!shape.is_empty());
    }
}

#[test]
fn a_frozen_projector_gives_the_same_loss_and_stays_as_it_was_and_attention_only_tunes_attention() {
    let device = Default::default();
    let loaded = load_llava::<B>(&tiny_llava(), &LoadOptions::default(), &device).unwrap();
    let projector_before = flat(&loaded.model.projector.valid());
    let projector = twigvlm_train::trainable::trainable(loaded.model.projector.clone());
    let parts = AlignedParts::new(projector, &loaded.model.language_model, 1, TunedLayerParts::Attention).unwrap();
    let (attention_before, mlp_before) =
        (flat(&parts.lm_layers[0].self_attn.valid()), flat(&parts.lm_layers[0].mlp.valid()));
    let mut objective = objective(loaded, &device);

    // One question per image: the frozen path (shared beginning run once, then the question on
    // its cache) computes what the graph path computes over the whole prompt.
    shapes(&mut objective).turns_per_image = 1;
    let (through_graph, _) = objective.loss(&parts, 0).unwrap();
    objective.freeze_projector = true;
    let (frozen, _) = objective.loss(&parts, 0).unwrap();
    let (a, b): (f32, f32) = (through_graph.into_scalar().elem(), frozen.into_scalar().elem());
    assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "the frozen path computes the same loss: {a} vs {b}");

    // Several questions about several images run as one right-padded batch on copies of their
    // images' beginnings: the same loss as each question asked alone through the graph.
    // With either padding (few shapes for the GPU, tight for the CPU), and with descriptions
    // among the short answers (questions of different lengths run as separate batches).
    shapes(&mut objective).turns_per_image = 3;
    shapes(&mut objective).tasks = TaskMix::all();
    for padding in [SequencePadding::TIGHT, SequencePadding::FEW_SHAPES] {
        objective.padding = padding;
        let conversations = [objective.train.get(0), objective.train.get(1)];
        let tasks: Vec<_> = conversations.iter().flat_map(|c| &c.turns).map(|turn| turn.task_name()).collect();
        assert!(tasks.contains(&"describe") && tasks.iter().any(|&task| task != "describe"), "{tasks:?}");
        let mut batched = TokenMeanLoss::new();
        objective.add_conversations(&mut batched, &parts, &conversations).unwrap();
        objective.freeze_projector = false;
        let mut alone = TokenMeanLoss::new();
        let questions: Vec<_> = conversations.iter().flat_map(|c| c.questions_alone()).collect();
        objective.add_conversations(&mut alone, &parts, &questions).unwrap();
        objective.freeze_projector = true;
        let value = |loss: TokenMeanLoss<B>| -> f32 { loss.finish().expect("assistant tokens").0.into_scalar().elem() };
        let (a, b) = (value(alone), value(batched));
        assert!(
            (a - b).abs() <= 1e-5 * a.abs().max(1.0),
            "questions batched with padding give each question's own loss with {padding:?}: {a} vs {b}"
        );
    }
    shapes(&mut objective).turns_per_image = 2;
    shapes(&mut objective).tasks = TaskMix::short();

    let dir = twigvlm_testkit::temp_dir("align-frozen");
    let options = TrainOptions {
        steps: 3,
        schedule: LrSchedule::warmup_cosine(1e-2, 3, 0.0),
        optimizer: OptimizerConfig::default(),
        checkpoint_every: 1000,
        eval_every: None,
        log_every: 1,
        out_dir: dir.path().to_path_buf(),
        resume: false,
        show_progress: false,
        time_limit: None,
    };
    let (parts, _) = train(&mut objective, parts, &options, &device).unwrap();
    let parts = parts.valid();
    assert_eq!(flat(&parts.projector), projector_before, "a frozen projector does not change");
    assert_ne!(flat(&parts.lm_layers[0].self_attn), attention_before, "the tuned layer's attention trains");
    assert_eq!(flat(&parts.lm_layers[0].mlp), mlp_before, "the tuned layer's MLP stays pretrained");
    let exported = parts.tuned_layer_tensors("model.language_model");
    assert_eq!(exported.len(), flat_count(&parts.lm_layers[0].self_attn), "only the attention tensors are saved");
    assert!(exported.iter().all(|(name, _, _)| name.contains(".self_attn.")));
}

/// A chat replay: a text-only conversation in a frozen-projector batch trains on what the
/// language model alone computes over its prompt, and does not change the image questions' loss.
#[test]
fn text_only_conversations_train_beside_image_ones_with_a_frozen_projector() {
    use burn::prelude::Tensor;
    use twigvlm_backbone::llava::embed_with_image;
    use twigvlm_backbone::{AttentionProbe, KvCache};
    use twigvlm_train::examples::single_sequence;

    let device = Default::default();
    let loaded = load_llava::<B>(&tiny_llava(), &LoadOptions::default(), &device).unwrap();
    let projector = twigvlm_train::trainable::trainable(loaded.model.projector.clone());
    let parts = AlignedParts::new(projector, &loaded.model.language_model, 1, TunedLayerParts::Attention).unwrap();
    let mut objective = objective(loaded, &device);
    objective.freeze_projector = true;
    let chat = Conversation {
        id: "chat".into(),
        image: None,
        turns: vec![Turn {
            user: "Say hello to the cat.".into(),
            assistant: "Hello, cat! How are you?".into(),
            kind: None,
        }],
    };
    let value = |loss: TokenMeanLoss<B>| -> (f32, usize) {
        let (mean, tokens) = loss.finish().expect("assistant tokens");
        (mean.into_scalar().elem(), tokens)
    };
    let loss_of = |objective: &AlignmentObjective<B>, conversations: &[Conversation]| {
        let mut loss = TokenMeanLoss::new();
        objective.add_conversations(&mut loss, &parts, conversations).unwrap();
        value(loss)
    };

    // Reference: the whole language model over the prompt, cross-entropy at the answer's tokens.
    let lm = objective.language_model.valid();
    let encoded = objective.encoder.encode(&chat, 0).unwrap();
    assert!(encoded.prompt.image_span.is_none());
    let positions: Vec<usize> = (0..encoded.prompt.len()).collect();
    let embeds = embed_with_image(&lm, &encoded.prompt, None, &device);
    let mut cache = KvCache::new(lm.num_layers());
    let hidden = lm
        .forward_layers(
            embeds,
            &lm.rope(&positions, &device),
            0..lm.num_layers(),
            &mut cache,
            &AttentionProbe::default(),
        )
        .hidden;
    let logits = single_sequence(lm.logits(
        hidden.select(1, encoded.target_rows::<<B as burn::tensor::backend::AutodiffBackend>::InnerBackend>(&device)),
    ));
    let mut reference = TokenMeanLoss::<B>::new();
    reference.add(Tensor::from_inner(logits), &encoded.target_ids());
    let (expected, expected_tokens) = value(reference);

    let (text, text_tokens) = loss_of(&objective, std::slice::from_ref(&chat));
    assert_eq!(text_tokens, expected_tokens);
    assert!(
        (text - expected).abs() <= 1e-5 * expected.abs().max(1.0),
        "text-only loss {text} vs the language model's {expected}"
    );

    let image = objective.train.get(0);
    let (image_loss, image_tokens) = loss_of(&objective, std::slice::from_ref(&image));
    let (mixed, mixed_tokens) = loss_of(&objective, &[image, chat]);
    assert_eq!(mixed_tokens, image_tokens + text_tokens);
    let weighted = (image_loss * image_tokens as f32 + text * text_tokens as f32) / mixed_tokens as f32;
    assert!(
        (mixed - weighted).abs() <= 1e-5 * weighted.abs().max(1.0),
        "mixed batch {mixed} vs the token-weighted mean {weighted}"
    );
}
