use twigvlm_data::{DatasetSpec, ImageSource};

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn scratch(name: &str) -> twigvlm_testkit::TempDir {
    twigvlm_testkit::temp_dir(&format!("data-{name}"))
}

#[test]
fn reads_multi_turn_records_with_images_resolved() {
    let tmp = scratch("ok");
    let dir = tmp.path();
    let path = write(
        dir,
        "data.json",
        r#"[{"id": "a1", "image": "imgs/x.png", "conversations": [
              {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cat."},
              {"from": "human", "value": "Colour?"}, {"from": "gpt", "value": "Black."}]},
            {"id": 7, "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}]"#,
    );
    let data = DatasetSpec::parse(path.to_str().unwrap()).unwrap().open(None).unwrap();
    assert_eq!(data.len(), 2);
    let first = data.get(0);
    assert_eq!(first.id, "a1");
    assert_eq!(first.image, Some(ImageSource::File(dir.join("imgs/x.png"))));
    assert_eq!(first.turns.len(), 2);
    assert_eq!(first.turns[1].assistant, "Black.");
    let second = data.get(1);
    assert_eq!((second.id.as_str(), second.image.is_none()), ("7", true));
    let rooted = DatasetSpec::parse(path.to_str().unwrap()).unwrap().open(Some(std::path::Path::new("/data"))).unwrap();
    assert_eq!(rooted.get(0).image, Some(ImageSource::File("/data/imgs/x.png".into())));
}

#[test]
fn malformed_records_name_the_record() {
    let tmp = scratch("bad");
    let dir = tmp.path();
    for (text, needle) in [
        (r#"[{"id": "q", "conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]}]"#, "id q"),
        (r#"[{"id": "r", "conversations": [{"from": "human", "value": "x"}]}]"#, "1 messages"),
        (r#"{"not": "a list"}"#, "not LLaVA instruction JSON"),
    ] {
        let path = write(dir, "bad.json", text);
        let message = DatasetSpec::parse(path.to_str().unwrap()).unwrap().open(None).unwrap_err().to_string();
        assert!(message.contains(needle), "{message}");
    }
}

#[test]
fn a_mixture_takes_its_parts_in_turn_and_cycles_the_shorter() {
    let tmp = scratch("mixture");
    let dir = tmp.path();
    let path = write(
        dir,
        "chat.json",
        r#"[{"id": "c0", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
            {"id": "c1", "conversations": [{"from": "human", "value": "A"}, {"from": "gpt", "value": "B"},
              {"from": "human", "value": "C"}, {"from": "gpt", "value": "D"}]}]"#,
    );
    let specs = ["shapes:seed=3,n=5,turns=2".to_string(), path.to_str().unwrap().to_string()];
    let spec = DatasetSpec::parse_all(&specs).unwrap();
    let data = spec.open(None).unwrap();
    let shapes = DatasetSpec::parse(&specs[0]).unwrap().open(None).unwrap();
    assert_eq!(data.len(), 10, "two parts, each read up to the longest's 5 examples");
    let ids: Vec<String> = (0..data.len()).map(|i| data.get(i).id).collect();
    assert_eq!(&ids[..2], [shapes.get(0).id, "c0".to_string()]);
    assert_eq!(&ids[2..6], [shapes.get(1).id, "c1".to_string(), shapes.get(2).id, "c0".to_string()]);
    // Shapes: 5 examples × 2 turns; chat cycled for 5 draws: c0 c1 c0 c1 c0 = 1+2+1+2+1 turns.
    assert_eq!(data.question_count(), 10 + 7);
    assert_eq!(spec.seed_range(), Some(twigvlm_data::SeedRange::Train));
    let with_eval = ["shapes:seed=1000000,n=2".to_string(), specs[1].clone()];
    assert_eq!(DatasetSpec::parse_all(&with_eval).unwrap().seed_range(), Some(twigvlm_data::SeedRange::Eval));
    let empty = write(dir, "empty.json", "[]");
    let err = DatasetSpec::parse_all(&[specs[0].clone(), empty.to_str().unwrap().to_string()])
        .unwrap()
        .open(None)
        .unwrap_err();
    assert!(err.to_string().contains("part 2 has no examples"), "{err}");
    assert!(DatasetSpec::parse_all(&[]).is_err());
}
