//! easy-VQA specs on a wheel laid out as `easy-vqa==1.0` is (written here with Python's zipfile,
//! so pip is never called): unpacking, selection, kinds of answers, held-out split.

use std::path::Path;
use std::process::Command;

use twigvlm_data::easy_vqa::{EasyVqaAnswer, Split};
use twigvlm_data::spec::{Dataset, DatasetSpec};
use twigvlm_data::{ImageSource, QuestionKind, SeedRange};

/// Writes `{dir}/wheel/easy_vqa-1.0-py3-none-any.whl` with `test_questions` as the test split's
/// questions, two 64×64 images per split, and a train split of two questions.
fn fake_wheel(dir: &Path, test_questions: &str) {
    let wheel_dir = dir.join("wheel");
    std::fs::create_dir_all(&wheel_dir).unwrap();
    let image = twigvlm_testkit::image("shapes-80x60.png");
    let script = r#"
import sys, zipfile
wheel, test_questions, image = sys.argv[1], sys.argv[2], sys.argv[3]
with zipfile.ZipFile(wheel, "w") as z:
    z.writestr("easy_vqa/__init__.py", "")
    z.writestr("easy_vqa/data/answers.txt", "yes\nno\n")
    z.writestr("easy_vqa/data/test/questions.json", test_questions)
    z.writestr("easy_vqa/data/train/questions.json", '[["is there a circle?", "yes", 0], ["what is the blue shape?", "circle", 1]]')
    for split in ["train", "test"]:
        for i in range(2):
            z.write(image, f"easy_vqa/data/{split}/images/{i}.png")
"#;
    let status = Command::new("python3")
        .args(["-c", script])
        .arg(wheel_dir.join("easy_vqa-1.0-py3-none-any.whl"))
        .arg(test_questions)
        .arg(image)
        .status()
        .unwrap();
    assert!(status.success());
}

const TEST_QUESTIONS: &str = r#"[["what is the red shape?", "triangle", 0], ["what is the color of the triangle?", "red", 0],
    ["is there not a black shape in the image?", "yes", 0], ["does the image contain a circle?", "no", 1],
    ["what shape is in the image?", "rectangle", 1]]"#;

fn open(spec: &str) -> Vec<twigvlm_data::Conversation> {
    match DatasetSpec::parse(spec).unwrap().open(None).unwrap() {
        Dataset::Records(records) => records,
        other => panic!("easy-vqa opens as records, not {other:?}"),
    }
}

#[test]
fn the_test_split_is_unpacked_once_and_read_in_a_drawn_order() {
    let dir = twigvlm_testkit::temp_dir("easy-vqa");
    fake_wheel(dir.path(), TEST_QUESTIONS);
    let root = dir.path().display();
    let all = open(&format!("easy-vqa:split=test,dir={root}"));
    assert_eq!(all.len(), 5);
    assert!(dir.path().join("easy_vqa/data/test/images/1.png").is_file());
    assert!(!dir.path().join("unpacking").exists());
    let mut questions: Vec<&str> = all.iter().map(|c| c.turns[0].user.as_str()).collect();
    questions.sort();
    assert_eq!(questions[0], "does the image contain a circle?");
    for conversation in &all {
        let [turn] = conversation.turns.as_slice() else { panic!("one question per example") };
        let expected = match turn.assistant.as_str() {
            "yes" | "no" => EasyVqaAnswer::YesNo,
            "triangle" | "rectangle" => EasyVqaAnswer::Shape,
            _ => EasyVqaAnswer::Color,
        };
        assert_eq!(turn.kind, Some(QuestionKind::EasyVqa(expected)), "{}", turn.user);
        let Some(ImageSource::File(path)) = &conversation.image else { panic!("an image file") };
        assert!(path.is_file(), "{}", path.display());
        conversation.image.as_ref().unwrap().load().unwrap();
    }
    // Read again from the unpacked folder (the wheel gone): the same order for the same seed,
    // the first n of it, another order for another seed.
    std::fs::remove_dir_all(dir.path().join("wheel")).unwrap();
    let ids = |spec: String| open(&spec).into_iter().map(|c| c.id).collect::<Vec<_>>();
    let order = ids(format!("easy-vqa:split=test,dir={root}"));
    assert_eq!(ids(format!("easy-vqa:split=test,n=3,dir={root}")), order[..3]);
    assert_eq!(ids(format!("easy-vqa:split=test,seed=0,dir={root}")), order);
    let orders: Vec<_> = (1..6).map(|seed| ids(format!("easy-vqa:split=test,seed={seed},dir={root}"))).collect();
    assert!(orders.iter().any(|other| *other != order));
    assert_eq!(open(&format!("easy-vqa:split=train,dir={root}")).len(), 2);
}

#[test]
fn the_test_split_is_held_out_and_specs_are_checked() {
    let split = |spec: &str| DatasetSpec::parse(spec).unwrap().seed_range();
    assert_eq!(split("easy-vqa:split=test"), Some(SeedRange::Eval));
    assert_eq!(split("easy-vqa:split=train,n=10"), Some(SeedRange::Train));
    let mixture = DatasetSpec::parse_all(&["shapes:seed=3,n=5".into(), "easy-vqa:split=test".into()]).unwrap();
    assert_eq!(mixture.seed_range(), Some(SeedRange::Eval));
    let DatasetSpec::EasyVqa(spec) = DatasetSpec::parse("easy-vqa:split=train,n=7,seed=3,dir=/x").unwrap() else {
        panic!("an easy-vqa spec")
    };
    assert_eq!((spec.split, spec.n, spec.seed, spec.dir.as_path()), (Split::Train, Some(7), 3, Path::new("/x")));
    for (bad, says) in [
        ("easy-vqa:n=5", "missing split"),
        ("easy-vqa:split=val", "train or test"),
        ("easy-vqa:split=test,n=x", "not a non-negative integer"),
        ("easy-vqa:split=test,size=3", "unknown key"),
    ] {
        let error = DatasetSpec::parse(bad).unwrap_err().to_string();
        assert!(error.contains(says), "{bad}: {error}");
    }
}

#[test]
fn an_answer_outside_the_dataset_is_refused() {
    let dir = twigvlm_testkit::temp_dir("easy-vqa-bad");
    fake_wheel(dir.path(), r#"[["what is the red shape?", "hexagon", 0]]"#);
    let error = DatasetSpec::parse(&format!("easy-vqa:split=test,dir={}", dir.path().display()))
        .unwrap()
        .open(None)
        .unwrap_err()
        .to_string();
    assert!(error.contains("unknown answer `hexagon`"), "{error}");
}
