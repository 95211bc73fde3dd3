//! What the engine's batch tests share: the tiny fixture model with a random twig attached.

use burn::backend::Flex;
use twigvlm_backbone::weights::StorageDtype;
use twigvlm_engine::{Engine, LoadOptions};
use twigvlm_testkit::TempDir;
use twigvlm_twig::{save_twig, Twig, TwigConfig};

/// The tiny fixture with a twig of random blocks (K = 1, T = 2), saved in the returned
/// directory (keep it while the engine lives).
pub fn engine_with_twig() -> (Engine<Flex>, TempDir) {
    let mut engine = Engine::<Flex>::load(&twigvlm_testkit::tiny_llava(), &LoadOptions::default(), Default::default())
        .expect("the tiny fixture loads");
    let base = &engine.llava.model.language_model;
    let twig = Twig::init(base, &engine.llava.config.text, TwigConfig::new(1, 2), &Default::default()).unwrap();
    let dir = twigvlm_testkit::temp_dir("engine-twig");
    save_twig(dir.path(), &twig, base, serde_json::Value::Null, StorageDtype::F32).unwrap();
    engine.attach_twig(dir.path(), None).unwrap();
    (engine, dir)
}
