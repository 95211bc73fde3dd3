use twigvlm_data::{DatasetSpec, ImageSource};

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("twigvlm-data-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn reads_multi_turn_records_with_images_resolved() {
    let dir = scratch("ok");
    let path = write(
        &dir,
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
    let dir = scratch("bad");
    for (text, needle) in [
        (r#"[{"id": "q", "conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]}]"#, "id q"),
        (r#"[{"id": "r", "conversations": [{"from": "human", "value": "x"}]}]"#, "1 messages"),
        (r#"{"not": "a list"}"#, "not LLaVA instruction JSON"),
    ] {
        let path = write(&dir, "bad.json", text);
        let message = DatasetSpec::parse(path.to_str().unwrap()).unwrap().open(None).unwrap_err().to_string();
        assert!(message.contains(needle), "{message}");
    }
}
