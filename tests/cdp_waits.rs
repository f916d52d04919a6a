//! The DevTools helpers of `src/browser/cdp.rs` on real Chromium: the wait for the send
//! button that a warm tab arms before any request comes.

mod common;

use std::time::Duration;

use chromiumoxide::Page;
use common::chromium::{goto, js, Chromium};
use poed::browser::cdp::{ArmedWait, Wanted};

/// A page with a prompt box and a send button that starts disabled.
const PAGE: &str = "data:text/html,<textarea></textarea><button id=send disabled>Send</button>";

/// A browser showing [`PAGE`], and a wait for its send button armed there, renewed every
/// `period`.
async fn armed_on_the_page(period: Duration) -> (Chromium, Page, ArmedWait) {
    let chromium = Chromium::launch().await;
    let page = chromium.tab().await;
    goto(&page, PAGE).await;
    let send_button = [Wanted {
        selector: "#send",
        enabled: true,
    }];
    let armed = ArmedWait::arm_for(&page, &send_button, period)
        .await
        .expect("a document to watch");
    (chromium, page, armed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_armed_wait_renews_itself_and_still_sees_the_button_enabled_later() {
    let (chromium, page, armed) = armed_on_the_page(Duration::from_millis(200)).await;
    // Three renewals: the page's observer ended without finding anything, three times over.
    let mut renewals = armed.renewals();
    tokio::time::timeout(Duration::from_secs(20), renewals.wait_for(|n| *n >= 3))
        .await
        .expect("three renewals in time")
        .expect("the wait runs");
    assert!(armed.watching(), "still watching after its renewals");
    let _: bool = js(
        &page,
        "(() => { document.getElementById('send').disabled = false; return true; })()",
    )
    .await;
    let found = armed
        .found(Duration::from_secs(10))
        .await
        .expect("an answer from the page");
    assert_eq!(
        found.index,
        Some(0),
        "the enabled button, seen by a renewed watch"
    );
    chromium.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_armed_wait_ends_with_its_document() {
    let (chromium, page, armed) = armed_on_the_page(Duration::from_secs(20)).await;
    let mut renewals = armed.renewals();
    // A new document whose button is enabled: the old watch must not answer for it.
    goto(
        &page,
        "data:text/html,<textarea></textarea><button id=send>Send</button>",
    )
    .await;
    let found = armed.found(Duration::from_secs(10)).await;
    assert!(
        matches!(
            found,
            Err(_) | Ok(poed::browser::cdp::Found { index: None, .. })
        ),
        "the old document's watch gives nothing: {found:?}"
    );
    assert_eq!(*renewals.borrow_and_update(), 0);
    chromium.close().await;
}
