//! Writes example `index` of a shapes spec as PNG and prints its questions:
//! `cargo run -p twigvlm-data --example render_scene -- shapes:seed=1000000,n=10,task=all 3 scene.png`
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [spec, index, out] = args.as_slice() else {
        return Err("usage: render_scene SPEC INDEX OUT.png".into());
    };
    let data = twigvlm_data::DatasetSpec::parse(spec)?.open(None)?;
    let example = data.get(index.parse()?);
    if let Some(image) = &example.image {
        image.load()?.save(out)?;
    }
    for turn in &example.turns {
        println!("Q: {}\nA: {}", turn.user, turn.assistant);
    }
    Ok(())
}
