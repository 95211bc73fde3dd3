use twigvlm_backbone::chat_template::{JinjaTemplate, Segment};
use twigvlm_backbone::{ChatMessage, ChatTemplate, Role};

/// SmolLM2-135M-Instruct's template (from the GGUF's `tokenizer.chat_template`).
const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

fn chatml() -> ChatTemplate {
    ChatTemplate::Jinja(JinjaTemplate::new(SMOLLM2.into(), "<|im_start|>".into(), "<|im_end|>".into()).unwrap())
}

#[test]
fn chatml_renders_like_transformers_apply_chat_template() {
    let t = chatml();
    assert_eq!(
        t.render("What color is the triangle?", true).unwrap(),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\n<image>\nWhat color is the triangle?<|im_end|>\n<|im_start|>assistant\n"
    );
    let messages = [
        ChatMessage::new(Role::System, "Be brief."),
        ChatMessage::new(Role::User, "Hi"),
        ChatMessage::new(Role::Assistant, "Hello"),
    ];
    assert_eq!(
        t.render_messages(&messages, false).unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
    );
}

#[test]
fn vicuna_v1_multi_turn_matches_llava_conversation() {
    let t = ChatTemplate::VicunaV1;
    let turns =
        [("<image>\nWhat is it?".to_string(), "A cat.".to_string()), ("Colour?".to_string(), "Black.".to_string())];
    let segments = t.training_segments(None, &turns, true).unwrap();
    let text: String = segments.iter().map(|s| s.text.as_str()).collect();
    assert!(
        text.ends_with("USER: <image>\nWhat is it? ASSISTANT: A cat.</s>USER: Colour? ASSISTANT: Black.</s>"),
        "{text}"
    );
    let trained: Vec<&str> = segments.iter().filter(|s| s.trained).map(|s| s.text.as_str()).collect();
    assert_eq!(trained, [" A cat.</s>", " Black.</s>"]);
}

#[test]
fn training_segments_split_prompt_from_answer() {
    let turns = [
        ("What color is the ring?".to_string(), "red".to_string()),
        ("Is there a blue cross?".to_string(), "no".to_string()),
    ];
    let segments = chatml().training_segments(Some("Answer briefly."), &turns, true).unwrap();
    assert_eq!(
        segments,
        [
            Segment { text: "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\n<image>\nWhat color is the ring?<|im_end|>\n<|im_start|>assistant\n".into(), trained: false },
            Segment { text: "red<|im_end|>\n".into(), trained: true },
            Segment { text: "<|im_start|>user\nIs there a blue cross?<|im_end|>\n<|im_start|>assistant\n".into(), trained: false },
            Segment { text: "no<|im_end|>\n".into(), trained: true },
        ]
    );
}

#[test]
fn template_errors_are_reported() {
    let raising =
        JinjaTemplate::new("{{ raise_exception('only user turns') }}".into(), String::new(), String::new()).unwrap();
    let err = ChatTemplate::Jinja(raising).render("hi", false).unwrap_err().to_string();
    assert!(err.contains("only user turns"), "{err}");
    assert!(JinjaTemplate::new("{% for %}".into(), String::new(), String::new())
        .unwrap_err()
        .to_string()
        .contains("does not parse"));
    // Python string methods work (pycompat), as HF templates use them.
    let stripping =
        JinjaTemplate::new("{{ messages[0]['content'].strip() }}|".into(), String::new(), String::new()).unwrap();
    assert_eq!(ChatTemplate::Jinja(stripping).render("  hi  ", false).unwrap(), "hi|");
    // A template that puts the newest message first cannot be split into training segments.
    let reversed = JinjaTemplate::new(
        "{% for m in messages|reverse %}{{ m['content'] }};{% endfor %}".into(),
        String::new(),
        String::new(),
    )
    .unwrap();
    let turns = [("a".to_string(), "b".to_string()), ("c".to_string(), "d".to_string())];
    let err = ChatTemplate::Jinja(reversed).training_segments(None, &turns, false).unwrap_err().to_string();
    assert!(err.contains("incrementally"), "{err}");
}

#[test]
fn templates_are_found_in_a_model_directory() {
    let tmp = twigvlm_testkit::temp_dir("template");
    let dir = tmp.path();
    assert!(ChatTemplate::from_model_dir(dir).unwrap().is_none());
    let config = serde_json::json!({"bos_token": {"content": "<s>"}, "eos_token": "</s>", "chat_template": "{{ bos_token }}{{ messages[0]['content'] }}{{ eos_token }}"});
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    let t = ChatTemplate::from_model_dir(dir).unwrap().unwrap();
    assert_eq!(t.render("x", false).unwrap(), "<s>x</s>");
    std::fs::write(dir.join("chat_template.jinja"), "[{{ messages[0]['content'] }}]").unwrap();
    assert_eq!(
        ChatTemplate::from_model_dir(dir).unwrap().unwrap().render("x", false).unwrap(),
        "[x]",
        "chat_template.jinja wins"
    );
}
