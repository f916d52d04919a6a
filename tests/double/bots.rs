//! The bots the double knows in 2025 mode: the handles of the original model table, some of
//! today's official bots and a few user-made ones, each with the codename its messages carry
//! as `author` and what one reply costs in points. 2023 mode accepts any handle instead.

/// One bot of the site.
#[derive(Debug, Clone, Copy)]
pub struct Bot {
    /// The URL name, e.g. `GPT-4` (pages are served under this exact spelling).
    pub handle: &'static str,
    /// What the page shows.
    pub display_name: &'static str,
    /// The `author` of its messages (Poe's `nickname`), e.g. `beaver`.
    pub codename: &'static str,
    /// Points one reply costs unless the options say otherwise.
    pub cost: u64,
    /// Made by Poe or a model provider, as opposed to a user.
    pub official: bool,
    /// A numeric id, as the site's `botId`.
    pub bot_id: u64,
}

const fn bot(
    handle: &'static str,
    display_name: &'static str,
    codename: &'static str,
    cost: u64,
    official: bool,
    bot_id: u64,
) -> Bot {
    Bot {
        handle,
        display_name,
        codename,
        cost,
        official,
        bot_id,
    }
}

/// Every bot of the double, in the order the explore page lists them.
pub const BOTS: &[Bot] = &[
    // Today's official bots.
    bot(
        "Claude-Sonnet-4.5",
        "Claude-Sonnet-4.5",
        "claude_sonnet_4_5",
        90,
        true,
        3_004_991,
    ),
    bot(
        "Claude-Opus-4.5",
        "Claude-Opus-4.5",
        "claude_opus_4_5",
        250,
        true,
        3_010_227,
    ),
    bot("GPT-4o", "GPT-4o", "gpt4_o", 60, true, 2_118_733),
    bot(
        "GPT-4o-Mini",
        "GPT-4o-Mini",
        "gpt4_o_mini",
        8,
        true,
        2_203_517,
    ),
    bot(
        "Gemini-2.5-Pro",
        "Gemini-2.5-Pro",
        "gemini_2_5_pro",
        70,
        true,
        2_870_004,
    ),
    bot(
        "Claude-3.5-Sonnet",
        "Claude-3.5-Sonnet",
        "claude_3_igloo",
        80,
        true,
        1_987_210,
    ),
    // The original model table (2023 handles).
    bot(
        "GPT-3.5-Turbo",
        "GPT-3.5-Turbo",
        "chinchilla",
        10,
        true,
        3_002,
    ),
    bot(
        "GPT-3.5-Turbo-Instruct",
        "GPT-3.5-Turbo-Instruct",
        "chinchilla_instruct",
        10,
        true,
        1_004_118,
    ),
    bot("GPT-4", "GPT-4", "beaver", 60, true, 3_004),
    bot("Google-PaLM", "Google-PaLM", "acouchy", 10, true, 3_007),
    bot(
        "Llama-2-7b",
        "Llama-2-7b",
        "llama_2_7b_chat",
        10,
        true,
        1_100_201,
    ),
    bot(
        "Llama-2-13b",
        "Llama-2-13b",
        "llama_2_13b_chat",
        12,
        true,
        1_100_202,
    ),
    bot(
        "Llama-2-70b",
        "Llama-2-70b",
        "llama_2_70b_chat",
        20,
        true,
        1_100_203,
    ),
    bot(
        "Code-Llama-7b",
        "Code-Llama-7b",
        "code_llama_7b_instruct",
        10,
        true,
        1_210_007,
    ),
    bot(
        "Code-Llama-13b",
        "Code-Llama-13b",
        "code_llama_13b_instruct",
        12,
        true,
        1_210_013,
    ),
    bot(
        "Code-Llama-34b",
        "Code-Llama-34b",
        "code_llama_34b_instruct",
        20,
        true,
        1_210_034,
    ),
    // User bots.
    bot(
        "RustReviewer",
        "Rust Reviewer",
        "u_rustreviewer_k2",
        30,
        false,
        4_410_318,
    ),
    bot(
        "Haiku-Poet-2025",
        "Haiku Poet",
        "u_haikupoet2025",
        15,
        false,
        4_512_660,
    ),
    bot(
        "SQL.Helper",
        "SQL Helper",
        "u_sql_helper_9x",
        20,
        false,
        4_603_007,
    ),
];

/// The bot whose handle or codename is `name`, compared case-insensitively.
pub fn find(name: &str) -> Option<&'static Bot> {
    BOTS.iter()
        .find(|b| b.handle.eq_ignore_ascii_case(name) || b.codename.eq_ignore_ascii_case(name))
}

/// The bot whose handle is `handle`, compared case-insensitively.
pub fn find_handle(handle: &str) -> Option<&'static Bot> {
    BOTS.iter().find(|b| b.handle.eq_ignore_ascii_case(handle))
}
