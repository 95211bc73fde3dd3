use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use twigvlm_data::shapes::{ask, column_word, describe_answer, parse_description, render, COLUMN_WORDS};
use twigvlm_data::{
    Colour, DatasetSpec, ImageSource, Scene, SceneConfig, SceneObject, Shape, ShapesDataset, Task, TaskMix,
};

fn object(row: usize, column: usize, shape: Shape, colour: Colour) -> SceneObject {
    SceneObject { row, column, shape, colour }
}

fn hand_built() -> Scene {
    Scene::new(vec![
        object(5, 1, Shape::Triangle, Colour::Red),
        object(0, 7, Shape::Ring, Colour::Blue),
        object(2, 3, Shape::Cross, Colour::Yellow),
    ])
}

#[test]
fn generator_is_deterministic_and_random_access() {
    let a = ShapesDataset::new(7, 50, TaskMix::all());
    let b = ShapesDataset::new(7, 50, TaskMix::all());
    assert_eq!(a.get(31), b.get(31));
    let forward: Vec<_> = a.iter().collect();
    assert_eq!(forward[31], b.get(31));
    assert_ne!(a.get(1), a.get(2));
    let (scene, image) = a.scene_and_image(31);
    assert_eq!(
        (scene, Some(ImageSource::Rendered(image))),
        (a.scene(31), a.get(31).image),
        "the same scene and image without questions"
    );
    assert_ne!(ShapesDataset::new(8, 50, TaskMix::all()).get(31), a.get(31));
}

#[test]
fn scenes_respect_uniqueness_and_counts() {
    let data = ShapesDataset::new(3, 300, TaskMix::short());
    for i in 0..data.len {
        let scene = data.scene(i);
        assert!((3..=6).contains(&scene.objects.len()));
        let mut shapes: Vec<_> = scene.objects.iter().map(|o| o.shape).collect();
        let mut colours: Vec<_> = scene.objects.iter().map(|o| o.colour).collect();
        let mut cells: Vec<_> = scene.objects.iter().map(|o| (o.row, o.column)).collect();
        let sorted = cells.clone();
        shapes.sort();
        shapes.dedup();
        colours.sort();
        colours.dedup();
        cells.sort();
        assert_eq!(cells, sorted, "reading order");
        cells.dedup();
        assert_eq!(shapes.len(), scene.objects.len());
        assert_eq!(colours.len(), scene.objects.len());
        assert_eq!(cells.len(), scene.objects.len());
    }
}

#[test]
fn answers_are_read_off_the_scene() {
    let scene = hand_built();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    for _ in 0..200 {
        let turn = ask(Task::Color, &scene, &mut rng);
        let shape = turn.user.trim_start_matches("What color is the ").trim_end_matches('?');
        let expected = scene.with_shape(Shape::from_word(shape).unwrap()).unwrap().colour.word();
        assert_eq!(turn.assistant, expected, "{}", turn.user);

        let turn = ask(Task::Shape, &scene, &mut rng);
        let colour = turn.user.trim_start_matches("What shape is the ").trim_end_matches(" one?");
        assert_eq!(turn.assistant, scene.with_colour(Colour::from_word(colour).unwrap()).unwrap().shape.word());

        let turn = ask(Task::Where, &scene, &mut rng);
        assert!(["Where is the triangle?", "Where is the ring?", "Where is the cross?"].contains(&turn.user.as_str()));
        let expected = match turn.user.as_str() {
            "Where is the triangle?" => "row 6, column two",
            "Where is the ring?" => "row 1, column eight",
            _ => "row 3, column four",
        };
        assert_eq!(turn.assistant, expected);
    }
    assert_eq!(
        describe_answer(&scene),
        "A blue ring at row 1, column eight. A yellow cross at row 3, column four. A red triangle at row 6, column two."
    );
}

#[test]
fn exists_is_balanced_with_hard_negatives() {
    let scene = hand_built();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (mut yes, mut hard, mut total) = (0, 0, 2000);
    for _ in 0..total {
        let turn = ask(Task::Exists, &scene, &mut rng);
        let words: Vec<&str> = turn.user.trim_end_matches('?').split(' ').collect();
        let (colour, shape) = (Colour::from_word(words[3]).unwrap(), Shape::from_word(words[4]).unwrap());
        let present = scene.contains(colour, shape);
        assert_eq!(turn.assistant, if present { "yes" } else { "no" }, "{}", turn.user);
        if present {
            yes += 1;
        } else if scene.with_colour(colour).is_some() && scene.with_shape(shape).is_some() {
            hard += 1;
        }
    }
    total -= yes;
    assert!((900..1100).contains(&yes), "yes answers: {yes}");
    assert!(hard as f64 / total as f64 > 0.6, "hard negatives {hard} of {total}");
}

#[test]
fn descriptions_parse_back() {
    let scene = hand_built();
    let mut parsed = parse_description(&describe_answer(&scene));
    parsed.sort_by_key(|o| (o.row, o.column));
    assert_eq!(parsed, scene.objects);
    assert_eq!(
        parse_description("A red triangle somewhere. Blue ring at Row 1, column Eight"),
        vec![object(0, 7, Shape::Ring, Colour::Blue)]
    );
    // A column said as a digit is read too; a row said as a word is not a location.
    assert_eq!(
        parse_description("A blue ring at row 1, column 8. A red cross at row one, column two."),
        vec![object(0, 7, Shape::Ring, Colour::Blue)]
    );
    assert_eq!(column_word(2), "three");
    assert_eq!(column_word(COLUMN_WORDS.len()), "13");
}

#[test]
fn rendering_paints_each_object_in_its_cell() {
    let scene = hand_built();
    let config = SceneConfig::default();
    let image = render(&scene, &config, &mut ChaCha8Rng::seed_from_u64(2));
    assert_eq!(image.dimensions(), (112, 112));
    // The cross and the triangle cover their cell centres; the ring's centre shows background.
    let centre = |o: &SceneObject| image.get_pixel(o.column as u32 * 14 + 7, o.row as u32 * 14 + 7).0;
    let close = |a: [u8; 3], b: [u8; 3]| a.iter().zip(b).all(|(&x, y)| (x as i32 - y as i32).abs() <= 30);
    for o in &scene.objects {
        let painted = close(centre(o), o.colour.rgb());
        assert_eq!(painted, o.shape != Shape::Ring, "{o:?}: {:?}", centre(o));
    }
    // An empty cell is background (bright, near grey).
    let empty = image.get_pixel(7 * 14 + 7, 7 * 14 + 7).0;
    assert!(empty.iter().all(|&v| v > 180), "{empty:?}");
}

#[test]
fn blank_image_keeps_background_drops_objects() {
    let data = ShapesDataset::new(11, 4, TaskMix::short());
    let (ImageSource::Rendered(real), ImageSource::Rendered(blank)) = (data.get(2).image.unwrap(), data.blank_image(2))
    else {
        panic!("rendered images expected")
    };
    let scene = data.scene(2);
    let occupied = |x: u32, y: u32| scene.objects.iter().any(|o| o.column as u32 == x / 14 && o.row as u32 == y / 14);
    let mut differing = 0;
    for (x, y, pixel) in real.enumerate_pixels() {
        if pixel != blank.get_pixel(x, y) {
            assert!(occupied(x, y), "pixel ({x},{y}) changed outside an object cell");
            differing += 1;
        }
    }
    assert!(differing > 0);
}

#[test]
fn specs_parse_and_reject_bad_input() {
    let DatasetSpec::Shapes(d) =
        DatasetSpec::parse("shapes:seed=1000001,n=40,task=color+where,objects=1-2,turns=3").unwrap()
    else {
        panic!()
    };
    assert_eq!((d.seed, d.len, d.turns_per_image), (1_000_001, 40, 3));
    assert_eq!(d.tasks, TaskMix(vec![Task::Color, Task::Where]));
    assert_eq!(d.scene.objects, 1..=2);
    assert_eq!(DatasetSpec::parse("shapes:seed=5,n=1").unwrap().seed_range(), Some(twigvlm_data::SeedRange::Train));
    for (bad, needle) in [
        ("shapes:n=4", "missing seed"),
        ("shapes:seed=1", "missing n"),
        ("shapes:seed=1,n=2,task=colour", "unknown task"),
        ("shapes:seed=1,n=2,objects=0-3", "objects=0-3"),
        ("shapes:seed=1,n=2,objects=2-9", "objects=2-9"),
        ("shapes:seed=x,n=2", "not a non-negative integer"),
        ("shapes:seed=1,n=2,size=3", "unknown key"),
        ("pictures:seed=1", "expected `shapes:"),
    ] {
        let message = DatasetSpec::parse(bad).unwrap_err().to_string();
        assert!(message.contains(needle), "{bad}: {message}");
    }
}

#[test]
fn scoring_normalises_and_counts_objects() {
    use twigvlm_data::score::{exact_match, DescribeCounts};
    assert!(exact_match(" Red.", "red"));
    assert!(exact_match("row 3,  column 5", "Row 3, column 5."));
    assert!(!exact_match("red circle", "red"));
    let reference = describe_answer(&hand_built());
    let mut counts = DescribeCounts::default();
    counts.add("A blue ring at row 1, column eight. A red triangle at row 6, column three. A green square at row 2, column two.", &reference);
    assert_eq!((counts.true_positives, counts.false_positives, counts.false_negatives), (1, 2, 2));
    assert!((counts.precision() - 1.0 / 3.0).abs() < 1e-12 && (counts.recall() - 1.0 / 3.0).abs() < 1e-12);
    counts = DescribeCounts::default();
    counts.add(&reference, &reference);
    assert_eq!(counts.f1(), 1.0);
}
