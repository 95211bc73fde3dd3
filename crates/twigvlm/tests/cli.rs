//! End-to-end runs of the `twigvlm` binary on the tiny fixtures.

use std::path::PathBuf;
use std::process::{Command, Output};

use twigvlm_testkit::{fixture, temp_dir};

fn twigvlm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_twigvlm")).args(args).output().expect("binary runs")
}

fn reference_greedy(model: &str, case: &str) -> Vec<u64> {
    let text = std::fs::read_to_string(fixture(&format!("reference/{model}.json"))).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["cases"][case]["greedy_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect()
}

fn model(name: &str) -> String {
    fixture(name).display().to_string()
}

#[test]
fn json_output_matches_the_hf_greedy_reference() {
    let image = twigvlm_testkit::image("shapes-80x60.png").display().to_string();
    let out = twigvlm(&[
        "generate",
        "--model",
        &model("tiny-llava-hf5"),
        "--image",
        &image,
        "--prompt",
        "What is shown in this image?",
        "--max-new-tokens",
        "20",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let generated: Vec<u64> = json["generated_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(generated, reference_greedy("tiny-llava-hf5", "shapes"));
    assert_eq!(json["prompt_ids"].as_array().unwrap().len(), 34);
    let stats = &json["stats"];
    assert_eq!(stats["new_tokens"], 20);
    for key in ["prefill_ms", "decode_ms", "tokens_per_s"] {
        assert!(stats[key].as_f64().unwrap() > 0.0, "{key}");
    }
    assert!(!json["text"].as_str().unwrap().is_empty());
}

#[test]
fn text_only_prompt_streams_text_and_stops_at_eos() {
    let out = twigvlm(&[
        "generate",
        "--model",
        &model("tiny-llava-hf5"),
        "--prompt",
        "Tell me a story about a robot.",
        "--max-new-tokens",
        "20",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json_run = twigvlm(&[
        "generate",
        "--model",
        &model("tiny-llava-hf5"),
        "--prompt",
        "Tell me a story about a robot.",
        "--max-new-tokens",
        "20",
        "--json",
    ]);
    let json: serde_json::Value = serde_json::from_slice(&json_run.stdout).unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim_end(), json["text"].as_str().unwrap().trim_end());
    // The webp case of the reference ends in EOS after 6 tokens.
    let image = twigvlm_testkit::image("square-64.webp").display().to_string();
    let out = twigvlm(&[
        "generate",
        "--model",
        &model("tiny-llava-hf5"),
        "--image",
        &image,
        "--prompt",
        "What shape is this?",
        "--json",
    ]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["stats"]["stop_reason"], "eos");
    let ids: Vec<u64> = json["generated_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(ids, reference_greedy("tiny-llava-hf5", "webp"));
}

#[test]
fn dump_tensors_writes_the_reference_shapes() {
    let tmp = temp_dir("dump");
    let dump = tmp.path().join("dump.safetensors");
    let image = twigvlm_testkit::image("shapes-80x60.png").display().to_string();
    let out = twigvlm(&[
        "generate",
        "--model",
        &model("tiny-llava-hf5"),
        "--image",
        &image,
        "--prompt",
        "What is shown in this image?",
        "--max-new-tokens",
        "2",
        "--json",
        "--dump-tensors",
        dump.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(&dump).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(tensors.tensor("pixel_values").unwrap().shape(), &[3, 56, 56]);
    assert_eq!(tensors.tensor("image_features").unwrap().shape(), &[16, 64]);
    assert_eq!(tensors.tensor("last_logits").unwrap().shape(), &[451]);
}

#[test]
fn sampling_is_reproducible_with_a_seed() {
    let run = |seed: &str| {
        let out = twigvlm(&[
            "generate",
            "--model",
            &model("tiny-llava-tied"),
            "--prompt",
            "Tell me a story.",
            "--temperature",
            "0.8",
            "--top-p",
            "0.9",
            "--seed",
            seed,
            "--max-new-tokens",
            "12",
            "--json",
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["generated_ids"].clone()
    };
    assert_eq!(run("7"), run("7"));
    assert_ne!(run("7"), run("8"), "different seeds should usually differ over 12 tokens");
}

#[test]
fn bad_input_gives_clear_errors() {
    let fail = |args: &[&str], needle: &str| {
        let out = twigvlm(args);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "expected `{needle}` in: {err}");
        assert!(!err.contains("panicked"), "{err}");
    };
    let corrupt = twigvlm_testkit::image("corrupt.png").display().to_string();
    fail(&["generate", "--model", &model("tiny-llava-hf5"), "--image", &corrupt, "--prompt", "hi"], "corrupt.png");
    fail(&["generate", "--model", &model("tiny-llava-hf5"), "--prompt", "  "], "empty");
    fail(&["generate", "--model", "/nonexistent/model", "--prompt", "hi"], "/nonexistent/model");
    fail(&["generate", "--model", &model("tiny-llava-hf5"), "--prompt", "hi", "--top-p", "0"], "top-p");
    #[cfg(not(feature = "cuda"))]
    fail(&["generate", "--model", &model("tiny-llava-hf5"), "--prompt", "hi", "--backend", "cuda"], "--features cuda");
    #[cfg(not(feature = "wgpu"))]
    fail(&["generate", "--model", &model("tiny-llava-hf5"), "--prompt", "hi", "--backend", "wgpu"], "--features wgpu");
}

#[test]
fn import_gguf_writes_a_model_directory() {
    // A directory the import creates.
    let tmp = temp_dir("cli-import");
    let out = tmp.path().join("model");
    let gguf = fixture("gguf/tiny-llama.gguf").display().to_string();
    let run = twigvlm(&["import", "gguf", &gguf, "--out", out.to_str().unwrap()]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(String::from_utf8_lossy(&run.stdout).contains("imported 20 tensors"));
    for file in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"] {
        assert!(out.join(file).is_file(), "{file}");
    }
    let again = twigvlm(&["import", "gguf", &gguf, "--out", out.to_str().unwrap()]);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("not empty"));
}

#[test]
fn eval_scores_every_task_beside_the_baselines() {
    let out = twigvlm(&[
        "eval",
        "--model",
        &model("tiny-llava-hf5"),
        "--data",
        "shapes:seed=1000000,n=10,task=all",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(json["n"], 10);
    let per_task = json["per_task"].as_object().unwrap();
    assert_eq!(per_task.keys().collect::<Vec<_>>(), ["color", "exists", "shape", "where"]);
    // Tasks cycle, so 10 questions are 2 of each of the 5 tasks.
    assert!(per_task.values().all(|t| t["n"] == 2));
    assert_eq!(json["describe"]["n"], 2);
    for key in ["accuracy", "blank_image_accuracy", "majority_accuracy", "describe_f1"] {
        let value = json[key].as_f64().unwrap_or_else(|| panic!("{key} missing"));
        assert!((0.0..=1.0).contains(&value), "{key} = {value}");
    }
    // With two questions per task the majority answer is right at least half the time.
    assert!(per_task.values().all(|t| t["majority_accuracy"].as_f64().unwrap() >= 0.5));
}

#[test]
fn training_refuses_evaluation_seeds() {
    let tmp = temp_dir("cli-train");
    let out_dir = tmp.path().join("out");
    let config = twigvlm_testkit::workspace_root().join("models/shapes-smol").display().to_string();
    let out = twigvlm(&[
        "train",
        "vision",
        "--config",
        &config,
        "--data",
        "shapes:seed=1000001,n=4",
        "--out",
        &out_dir.display().to_string(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("seed 1000001 is in the Eval range"), "{stderr}");
    // Data mixed into stage 2 is checked before anything loads.
    let out = twigvlm(&[
        "train",
        "instruct",
        "--config",
        &config,
        "--vision",
        "unused",
        "--language-model",
        "unused",
        "--mix-data",
        "easy-vqa:split=test",
        "--out",
        &out_dir.display().to_string(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("easy-vqa:split=test is held-out data"), "{stderr}");
}

/// A K=1, T=2 twig for the tiny fixture, trained for two steps into `root/ours`.
fn train_tiny_twig(root: &std::path::Path) -> PathBuf {
    let ours = root.join("ours");
    let out = twigvlm(&[
        "train-twig",
        "--model",
        &model("tiny-llava-hf5"),
        "--data",
        "shapes:seed=3,n=4",
        "--eval-data",
        "shapes:seed=1000000,n=2",
        "--k",
        "1",
        "--t",
        "2",
        "--batch-size",
        "2",
        "--quiet",
        "--out",
        &ours.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    ours
}

/// `generate --json` on the tiny fixture with an image, 5 new tokens, plus `extra`.
fn generate_about_an_image(extra: &[&str]) -> Output {
    let (base, image) = (model("tiny-llava-hf5"), twigvlm_testkit::image("shapes-80x60.png").display().to_string());
    let mut args = vec![
        "generate",
        "--model",
        &base,
        "--image",
        &image,
        "--prompt",
        "What is shown?",
        "--max-new-tokens",
        "5",
        "--json",
    ];
    args.extend_from_slice(extra);
    twigvlm(&args)
}

#[test]
fn token_pruning_reports_its_selection_and_ssd_stays_lossless_under_it_in_generate_eval_and_bench() {
    let tmp = temp_dir("cli-ttp");
    let root = tmp.path();
    let twig = train_tiny_twig(root).display().to_string();
    let json = |out: Output| -> serde_json::Value {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    // 16 visual tokens, 4 layers, K = 1: 50% is R̄ = 8; with FinalWipe at 3, R' = (4·8 − 16) / 2.
    for (policy, r_prime) in [("twig", 8), ("vlm-layer:K+T", 8), ("random:2", 8), ("fastv", 6)] {
        let args = ["--twig", &twig, "--policy", policy, "--visual-budget", "50%"];
        let pruned = json(generate_about_an_image(&args));
        let stats = &pruned["stats"];
        assert_eq!((stats["policy"].as_str(), stats["r_prime"].as_u64()), (Some(policy), Some(r_prime)), "{stats}");
        let kept: Vec<u64> =
            stats["kept_visual_indices"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert!(
            kept.len() == r_prime as usize && kept.windows(2).all(|w| w[0] < w[1]) && kept.iter().all(|&i| i < 16),
            "{kept:?}"
        );
        let ssd = json(generate_about_an_image(&[&args[..], &["--decoder", "ssd"]].concat()));
        assert_eq!(ssd["generated_ids"], pruned["generated_ids"], "{policy}");
        assert_eq!(ssd["stats"]["kept_visual_indices"], stats["kept_visual_indices"]);
        let tree = json(generate_about_an_image(&[&args[..], &["--decoder", "ssd", "--draft-tree", "3:3:6"]].concat()));
        assert_eq!(tree["generated_ids"], pruned["generated_ids"], "{policy}, tree drafting");
    }
    let unpruned = json(generate_about_an_image(&[]));
    assert!(unpruned["stats"].get("r_prime").is_none());

    // The RelAcc table: the unpruned row, then each policy at each budget; JSON and plot written.
    let results = root.join("results");
    let eval = json(twigvlm(&[
        "eval",
        "--model",
        &model("tiny-llava-hf5"),
        "--twig",
        &twig,
        "--data",
        "shapes:seed=1000000,n=2,task=short",
        "--json",
        "--policies",
        "none,fastv,twig",
        "--visual-budget",
        "50%,8",
        "--results-dir",
        &results.display().to_string(),
    ]));
    let rows = eval["rows"].as_array().unwrap();
    let cells: Vec<(&str, Option<&str>, u64)> = rows
        .iter()
        .map(|r| (r["policy"].as_str().unwrap(), r["visual_budget"].as_str(), r["r_prime"].as_u64().unwrap()))
        .collect();
    // `none` adds FinalWipe alone: every visual token below K_f (3 of the 4 layers here).
    assert_eq!(
        cells,
        [
            ("none", None, 16),
            ("none+final-wipe", None, 16),
            ("fastv", Some("50%"), 6),
            ("fastv", Some("8"), 6),
            ("twig", Some("50%"), 8),
            ("twig", Some("8"), 8)
        ]
    );
    assert!(rows.iter().all(|r| r["accuracy"].is_number() && r["avg_visual_tokens"].as_f64().unwrap() <= 16.0));
    assert_eq!((rows[1]["final_wipe"].as_u64(), rows[1]["avg_visual_tokens"].as_f64()), (Some(3), Some(12.0)));
    for row in rows {
        let (low, high) = (row["accuracy_ci"]["low"].as_f64().unwrap(), row["accuracy_ci"]["high"].as_f64().unwrap());
        let accuracy = row["accuracy"].as_f64().unwrap();
        assert!(low <= accuracy && accuracy <= high && high - low > 0.3, "two questions give a wide interval: {row}");
    }
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(results.join("relacc.json")).unwrap()).unwrap();
    assert_eq!(written["rows"], eval["rows"]);

    // The speed benchmark: every mode side by side, the speculative ones lossless.
    let bench = |modes: &str| {
        json(twigvlm(&[
            "bench",
            "--model",
            &model("tiny-llava-hf5"),
            "--twig",
            &twig,
            "--data",
            "shapes:seed=1000000,n=1,task=describe",
            "--json",
            "--modes",
            modes,
            "--max-new-tokens",
            "6",
            "--repeats",
            "1",
            "--visual-budget",
            "50%",
            "--results-dir",
            &results.display().to_string(),
        ]))
    };
    let report = bench("vanilla,fastv,ttp,ssd,ttp+ssd,ssd-tree,ttp+ssd-tree");
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(
        rows.iter().map(|r| r["mode"].as_str().unwrap()).collect::<Vec<_>>(),
        ["vanilla", "fastv", "ttp", "ssd", "ttp+ssd", "ssd-tree", "ttp+ssd-tree"]
    );
    assert!(
        rows.iter().all(|r| r["identical_to_baseline"] == true && r["tokens_per_s"].as_f64().unwrap() > 0.0),
        "{report}"
    );
    assert_eq!(rows[0]["rel_spd"], 1.0);
    assert!(rows[3]["mean_accepted"].is_number() && rows[0]["mean_accepted"].is_null());
    assert!(results.join("relspd.json").is_file());
    // A speculative mode without its baseline in the run still gets checked against it.
    assert_eq!(bench("ttp+ssd")["rows"][0]["identical_to_baseline"], true);

    // explain: both policies' selections drawn side by side.
    let heat_map = root.join("explain.png");
    let explained = json(twigvlm(&[
        "explain",
        "--model",
        &model("tiny-llava-hf5"),
        "--twig",
        &twig,
        "--image",
        &twigvlm_testkit::image("shapes-80x60.png").display().to_string(),
        "--prompt",
        "What color is the triangle?",
        "--visual-budget",
        "50%",
        "--out",
        &heat_map.display().to_string(),
        "--json",
    ]));
    let panels = explained["panels"].as_array().unwrap();
    let kept: Vec<usize> = panels.iter().map(|p| p["kept_patches"].as_array().unwrap().len()).collect();
    assert_eq!(kept, [8, 6], "twig then FastV: {explained}");
    assert!(panels.iter().all(|p| p["scores"].as_array().unwrap().len() == 16));
    let drawn = image::open(&heat_map).unwrap();
    assert!(2 * drawn.width() > 3 * drawn.height(), "two panels side by side: {}x{}", drawn.width(), drawn.height());

    let stderr = |args: &[&str]| String::from_utf8_lossy(&generate_about_an_image(args).stderr).into_owned();
    assert!(stderr(&["--policy", "twig", "--visual-budget", "8"]).contains("needs a twig"));
    assert!(stderr(&["--policy", "fastv"]).contains("needs a visual budget"));
    assert!(stderr(&["--policy", "fastv", "--visual-budget", "120%"]).contains("invalid visual budget"));
    assert!(
        stderr(&["--policy", "twig", "--twig", &twig, "--visual-budget", "8", "--final-wipe", "9"]).contains("K_f=9")
    );
    assert!(stderr(&["--policy", "bogus"]).contains("unknown prefill policy"));
}

#[test]
fn distill_writes_the_base_answers_as_instruction_json_that_train_twig_reads() {
    // A directory distill creates.
    let tmp = temp_dir("cli-distill");
    let root = tmp.path().join("distill");
    let out = root.display().to_string();
    let tiny = model("tiny-llava-hf5");
    let distill = |extra: &[&str]| {
        let args = [
            &[
                "distill",
                "--model",
                &tiny,
                "--data",
                "shapes:seed=7,n=2,task=all,turns=2",
                "--out",
                &out,
                "--short-max-new-tokens",
                "4",
                "--long-max-new-tokens",
                "6",
            ][..],
            extra,
        ]
        .concat();
        twigvlm(&args)
    };
    let run = distill(&[]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let records: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(root.join("distill.json")).unwrap()).unwrap();
    assert_eq!(records.len(), 4, "two images, two questions each, each asked alone");
    for record in &records {
        let image = record["image"].as_str().unwrap();
        assert!(root.join(image).is_file(), "{image}");
        let turns = record["conversations"].as_array().unwrap();
        assert_eq!(
            (turns.len(), turns[0]["from"].as_str(), turns[1]["from"].as_str()),
            (2, Some("human"), Some("gpt"))
        );
    }
    // The first answer is the base's own greedy answer to the same question about the same image.
    let first = &records[0]["conversations"];
    let answer = twigvlm(&[
        "generate",
        "--model",
        &model("tiny-llava-hf5"),
        "--image",
        &root.join(records[0]["image"].as_str().unwrap()).display().to_string(),
        "--prompt",
        first[0]["value"].as_str().unwrap(),
        "--max-new-tokens",
        "6",
        "--json",
    ]);
    let answer: serde_json::Value = serde_json::from_slice(&answer.stdout).unwrap();
    assert!(answer["text"].as_str().unwrap().starts_with(first[1]["value"].as_str().unwrap()), "{answer} vs {first}");

    let again = distill(&[]);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("--resume"));
    let resumed = distill(&["--resume"]);
    assert!(
        String::from_utf8_lossy(&resumed.stdout).contains("0 answers generated now"),
        "{}",
        String::from_utf8_lossy(&resumed.stdout)
    );

    let twig = root.join("twig").display().to_string();
    let trained = twigvlm(&[
        "train-twig",
        "--model",
        &model("tiny-llava-hf5"),
        "--data",
        &root.join("distill.json").display().to_string(),
        "--eval-data",
        "shapes:seed=1000000,n=2",
        "--k",
        "1",
        "--t",
        "2",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--targets",
        "base",
        "--out",
        &twig,
        "--quiet",
    ]);
    assert!(trained.status.success(), "{}", String::from_utf8_lossy(&trained.stderr));
}

#[test]
fn train_twig_writes_a_twig_that_converts_to_the_official_layout_and_back() {
    let tmp = temp_dir("cli-twig");
    let root = tmp.path();
    let (ours, official, back) = (train_tiny_twig(root), root.join("official"), root.join("back"));
    let base = model("tiny-llava-hf5");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ours.join("twig.json")).unwrap()).unwrap();
    assert_eq!((meta["config"]["k"].as_u64(), meta["config"]["t"].as_u64()), (Some(1), Some(2)));
    // One epoch by default: 4 conversations in batches of 2.
    assert_eq!(meta["training"]["steps"], 2);
    assert!(meta["training"]["history"].as_array().unwrap().last().unwrap()["eval"].to_string().contains("agreement"));

    let convert = |from: &std::path::Path, to: &std::path::Path, format: &str| {
        twigvlm(&[
            "twig",
            "convert",
            "--model",
            &base,
            &from.display().to_string(),
            &to.display().to_string(),
            "--to-format",
            format,
        ])
    };
    assert!(convert(&ours, &official, "official").status.success());
    assert!(official.join("model.safetensors").is_file());
    std::fs::remove_file(official.join("twig.json")).unwrap();
    let missing_k = convert(&official, &back, "ours");
    assert!(
        String::from_utf8_lossy(&missing_k.stderr).contains("--twig-k"),
        "{}",
        String::from_utf8_lossy(&missing_k.stderr)
    );
    let out = twigvlm(&[
        "twig",
        "convert",
        "--model",
        &base,
        &official.display().to_string(),
        &back.display().to_string(),
        "--to-format",
        "ours",
        "--twig-k",
        "1",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(back.join("twig.safetensors").is_file());

    // The twig alone answers: ours, and the official layout given K on the command line.
    let generate = generate_about_an_image;
    for twig_args in
        [vec!["--twig", &*ours.to_string_lossy()], vec!["--twig", &*official.to_string_lossy(), "--twig-k", "1"]]
    {
        let out = generate(&twig_args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["decoder"], "twig-only");
        assert!(!json["generated_ids"].as_array().unwrap().is_empty());
    }
    // The speculative decoder gives the base's greedy tokens.
    let base_out = generate(&[]);
    let ssd_out = generate(&["--twig", &*ours.to_string_lossy(), "--decoder", "ssd"]);
    assert!(ssd_out.status.success(), "{}", String::from_utf8_lossy(&ssd_out.stderr));
    let (base_json, ssd_json): (serde_json::Value, serde_json::Value) =
        (serde_json::from_slice(&base_out.stdout).unwrap(), serde_json::from_slice(&ssd_out.stdout).unwrap());
    assert_eq!(ssd_json["decoder"], "ssd");
    assert_eq!(ssd_json["generated_ids"], base_json["generated_ids"]);
    assert!(ssd_json["stats"]["speculative"]["rounds"].as_u64().unwrap() >= 1);
    let no_twig = generate(&["--decoder", "twig-only"]);
    assert!(
        String::from_utf8_lossy(&no_twig.stderr).contains("needs --twig"),
        "{}",
        String::from_utf8_lossy(&no_twig.stderr)
    );
    let eval = twigvlm(&[
        "eval",
        "--model",
        &base,
        "--data",
        "shapes:seed=1000000,n=2",
        "--no-blank-baseline",
        "--json",
        "--twig",
        &ours.display().to_string(),
    ]);
    assert!(eval.status.success(), "{}", String::from_utf8_lossy(&eval.stderr));
    let report: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    assert_eq!(report["decoder"], "twig-only");
    assert!(report["n"].as_u64().unwrap() > 0);

    let bad = twigvlm(&[
        "train-twig",
        "--model",
        &base,
        "--k",
        "3",
        "--t",
        "3",
        "--quiet",
        "--out",
        &root.join("bad").display().to_string(),
    ]);
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("exceeds the base model's 4 layers"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

/// The tensor names in a safetensors file's header.
fn safetensors_names(path: &std::path::Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    header.keys().filter(|k| *k != "__metadata__").cloned().collect()
}

#[test]
fn a_pruning_head_trains_alone_ranks_for_twig_plus_plus_and_travels_in_both_formats() {
    let tmp = temp_dir("cli-pruning-head");
    let root = tmp.path();
    let (ours, plus, official, back) =
        (train_tiny_twig(root), root.join("plus"), root.join("official"), root.join("back"));
    let base = model("tiny-llava-hf5");
    let out = twigvlm(&[
        "train-twig",
        "--model",
        &base,
        "--from-twig",
        &ours.display().to_string(),
        "--pruning-head",
        "--pruning-head-only",
        "--attention-teacher",
        "3",
        "--data",
        "shapes:seed=3,n=4",
        "--eval-data",
        "shapes:seed=1000000,n=2",
        "--batch-size",
        "2",
        "--quiet",
        "--out",
        &plus.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(plus.join("twig.json")).unwrap()).unwrap();
    assert_eq!(meta["config"]["pruning_head"], true);
    assert_eq!(meta["training"]["pruning_head_only"], true);
    assert!(meta["training"]["history"].to_string().contains("attention_kl"), "{meta}");
    let names = safetensors_names(&plus.join("twig.safetensors"));
    assert!(names.contains(&"leaf_attention_module.q_gate.weight".to_string()), "{names:?}");

    let json = |out: Output| -> serde_json::Value {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let pruned = |twig: &std::path::Path, policy: &str| {
        json(generate_about_an_image(&[
            "--twig",
            &twig.display().to_string(),
            "--policy",
            policy,
            "--visual-budget",
            "50%",
        ]))
    };
    // Only the head trained: the twig policy keeps what it kept before and answers the same.
    let (before, after) = (pruned(&ours, "twig"), pruned(&plus, "twig"));
    assert_eq!(before["stats"]["kept_visual_indices"], after["stats"]["kept_visual_indices"]);
    assert_eq!(before["generated_ids"], after["generated_ids"]);
    let ranked = pruned(&plus, "twig++");
    assert_eq!(ranked["stats"]["policy"], "twig++");
    assert_eq!(ranked["stats"]["kept_visual_indices"].as_array().unwrap().len(), 8);
    let refused = generate_about_an_image(&[
        "--twig",
        &ours.display().to_string(),
        "--policy",
        "twig++",
        "--visual-budget",
        "50%",
    ]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("needs a twig with a pruning head"), "{stderr}");

    // The second stage trains the head alone by its answers under pruning.
    let grpo = root.join("grpo");
    let out = twigvlm(&[
        "train-pruning-head",
        "--model",
        &base,
        "--twig",
        &plus.display().to_string(),
        "--data",
        "shapes:seed=3,n=4",
        "--eval-data",
        "shapes:seed=1000000,n=2",
        "--samples",
        "4",
        "--visual-budget",
        "25%,50%",
        "--batch-size",
        "2",
        "--quiet",
        "--out",
        &grpo.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(grpo.join("twig.json")).unwrap()).unwrap();
    assert_eq!(
        (meta["training"]["stage"].as_str(), meta["training"]["samples"].as_u64()),
        (Some("pruning-head"), Some(4))
    );
    let last = meta["training"]["history"].as_array().unwrap().last().unwrap();
    assert!(last.to_string().contains("nll_at_25%") && last.to_string().contains("nll_at_50%"), "{last}");
    assert!(last["grad_norm"].as_f64().unwrap() > 0.0, "the head gets a gradient: {last}");
    assert_eq!(pruned(&grpo, "twig")["generated_ids"], before["generated_ids"]);
    assert_eq!(pruned(&grpo, "twig++")["stats"]["kept_visual_indices"].as_array().unwrap().len(), 8);
    let no_head = twigvlm(&[
        "train-pruning-head",
        "--model",
        &base,
        "--twig",
        &ours.display().to_string(),
        "--quiet",
        "--out",
        &root.join("x").display().to_string(),
    ]);
    let stderr = String::from_utf8_lossy(&no_head.stderr);
    assert!(!no_head.status.success() && stderr.contains("has no pruning head"), "{stderr}");

    // The official layout carries the head under the same names; read back, it ranks the same.
    let convert = |from: &std::path::Path, to: &std::path::Path, format: &str| {
        let out = twigvlm(&[
            "twig",
            "convert",
            "--model",
            &base,
            &from.display().to_string(),
            &to.display().to_string(),
            "--to-format",
            format,
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    convert(&plus, &official, "official");
    assert!(safetensors_names(&official.join("model.safetensors"))
        .contains(&"leaf_attention_module.k_gate.weight".to_string()));
    convert(&official, &back, "ours");
    assert_eq!(
        pruned(&official, "twig++")["stats"]["kept_visual_indices"],
        pruned(&back, "twig++")["stats"]["kept_visual_indices"]
    );
}
