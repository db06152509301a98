"""The chat page in a real browser (Debian's headless Chromium, driven by Playwright): every flow a
person goes through, found by the accessible names people and screen readers use."""

import json
import os
import re
import uuid

from conftest import REPLY
from playwright.sync_api import expect

PASSWORD = "correct horse battery staple"
TIMEOUT = 20_000
expect.set_options(timeout=TIMEOUT)


def email():
    return f"web-{uuid.uuid4().hex[:10]}@example.com"


def sign_up(page, base, address=None):
    address = address or email()
    page.goto(base)
    page.get_by_label("Email").fill(address)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_role("log", name="Messages")).to_be_visible()
    return address


def replies(page):
    return page.locator("#messages li.assistant")


def send(page, text):
    page.get_by_label("Message", exact=True).fill(text)
    page.get_by_label("Message", exact=True).press("Enter")


def finished(page):
    """Waits for the turn streaming now to end (the last reply is stored: Regenerate is offered)."""
    expect(page.get_by_role("button", name="Stop")).to_be_hidden()
    expect(page.get_by_role("button", name="Regenerate")).to_be_visible()


# Samples the last reply's text length at every animation frame until it stops streaming.
SAMPLE_FRAMES = """async () => {
  const lengths = [];
  const deadline = performance.now() + 20000;
  while (performance.now() < deadline) {
    await new Promise(requestAnimationFrame);
    const reply = document.querySelector('#messages li.assistant:last-child');
    const text = reply ? reply.querySelector('.text').textContent : '';
    lengths.push(text.length);
    if (reply && !reply.classList.contains('pending') && text.length) break;
  }
  return lengths;
}"""


def test_a_whole_session_from_sign_up_to_account_deletion(server, page, double):
    address = sign_up(page, server.url)
    expect(page.get_by_role("navigation", name="Dialogues")).to_be_visible()
    # Before the first message, the page says what the guide is not.
    expect(page.locator("#first-disclaimer")).to_contain_text("not a crisis service")

    # The first reply streams in: its text grows over several frames.
    send(page, "First message")
    lengths = page.evaluate(SAMPLE_FRAMES)
    growing = sorted(set(n for n in lengths if n))
    assert len(growing) >= 3, lengths
    assert lengths == sorted(lengths), "the text only grows while it streams"
    finished(page)
    expect(replies(page).last.locator(".text")).to_have_text(re.sub(r"\n+", "", REPLY))
    assert page.get_by_role("log", name="Messages").locator("p", has_text="<here> & no hurry").count() == 1
    first_id = page.evaluate("location.hash")
    assert re.fullmatch(r"#/d/[0-9a-f-]{36}", first_id)

    # A second turn, stopped midway: the partial reply stays, marked, also after a reload.
    send(page, "Second message")
    expect(replies(page)).to_have_count(2)
    expect(replies(page).last.locator(".text")).to_contain_text("Thank you for telling me")
    page.get_by_role("button", name="Stop").click()
    expect(replies(page).last.locator(".note")).to_have_text(re.compile("^Stopped"))
    partial = replies(page).last.locator(".text").text_content()
    assert 0 < len(partial) < len(REPLY)
    page.reload()
    expect(replies(page)).to_have_count(2)
    expect(replies(page).last.locator(".note")).to_have_text("Stopped")
    stored = replies(page).last.locator(".text").text_content()
    assert stored.startswith(partial.strip()), (stored, partial)

    # Regenerate: a new version, and the stopped one is still there to look at.
    calls = double.calls
    page.get_by_role("button", name="Regenerate").click()
    finished(page)
    assert double.calls == calls + 1
    expect(page.get_by_text("Version 2 of 2")).to_be_visible()
    expect(replies(page).last.locator(".note")).to_be_hidden()
    page.get_by_role("button", name="Previous version").click()
    expect(page.get_by_text("Version 1 of 2")).to_be_visible()
    expect(replies(page).last.locator(".text")).to_have_text(stored)
    page.get_by_role("button", name="Next version").click()
    expect(page.get_by_text("Version 2 of 2")).to_be_visible()

    # Edit the second message: a fork opens as a new dialogue and continues with the new text.
    page.get_by_role("button", name="Edit this message").nth(1).click()
    page.get_by_label("Edited message").fill("Second message, edited")
    page.get_by_role("button", name="Send edit").click()
    # The fork is a request of its own: the page moves to it, then streams the edited message.
    expect(page).not_to_have_url(re.compile(re.escape(first_id) + "$"))
    finished(page)
    log = page.get_by_role("log", name="Messages")
    expect(log.locator("li.user .text")).to_have_text(["First message", "Second message, edited"])
    dialogues = page.get_by_role("navigation", name="Dialogues").get_by_role("link")
    expect(dialogues).to_have_count(2)

    # Rename the fork.
    page.get_by_role("button", name="Rename").click()
    page.get_by_label("Title").fill("My inner critic")
    page.get_by_label("Title").press("Enter")
    expect(page.get_by_role("heading", name="My inner critic")).to_be_visible()
    expect(dialogues.first).to_have_text("My inner critic")

    # Export it: a JSON file with every message.
    page.get_by_role("button", name="Export").click()
    with page.expect_download() as download:
        page.get_by_role("button", name="JSON file").click()
    with open(download.value.path()) as f:
        exported = json.load(f)
    assert exported["format"] == "ifs-guide-export/1"
    contents = [m["content"] for m in exported["dialogue"]["messages"]]
    assert contents[0] == "First message" and contents[2] == "Second message, edited", contents
    assert exported["dialogue"]["title"] == "My inner critic"

    # Delete it.
    page.get_by_role("button", name="Delete", exact=True).click()
    page.get_by_role("button", name="Yes, delete it").click()
    expect(dialogues).to_have_count(1)
    expect(page.get_by_role("status")).to_have_text("The dialogue was deleted.")

    # Log out, and in again: the first dialogue is still there.
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    page.get_by_label("Email").fill(address)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(dialogues).to_have_count(1)
    assert page.evaluate("sessionStorage.length") == 1

    # Delete the account: a wrong password changes nothing, the right one erases everything.
    page.get_by_role("button", name="Delete account").click()
    page.get_by_label("Your password").fill("not my password")
    page.get_by_role("button", name="Yes, delete my account").click()
    expect(page.locator("#confirm-error")).to_contain_text("wrong")
    page.get_by_label("Your password").fill(PASSWORD)
    page.get_by_role("button", name="Yes, delete my account").click()
    expect(page.locator("#auth-error")).to_contain_text("deleted")
    assert page.evaluate("sessionStorage.length") == 0

    # The email is free again.
    sign_up(page, server.url, address)
    expect(page.locator("#dialogues-more")).to_have_text("No dialogues yet.")


def test_markup_and_script_in_messages_are_shown_as_text_and_run_nothing(server, page):
    sign_up(page, server.url)
    payload = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script><b>bold</b>'
    # The double echoes it back, so the reply carries it too.
    send(page, f"ECHO {payload}")
    finished(page)
    log = page.get_by_role("log", name="Messages")
    expect(log.locator("li.user .text")).to_have_text(f"ECHO {payload}")
    expect(replies(page).last.locator(".text")).to_have_text(payload)
    assert log.locator("img, script, b").count() == 0
    assert page.evaluate("window.__xss") is None
    # The list shows the title as text too.
    expect(page.get_by_role("navigation", name="Dialogues").get_by_role("link")).to_have_text(
        re.compile(r"^ECHO <img src=x onerror=\"window.__xss=1\"><script>"))


def test_a_crisis_message_shows_the_crisis_lines_and_the_agent_is_not_asked(server, page, double):
    sign_up(page, server.url)
    calls = double.calls
    send(page, "I want to end my life")
    resources = page.get_by_role("complementary", name="Crisis lines")
    expect(resources).to_be_visible()
    expect(resources.locator('a[href="tel:988"]').first).to_be_visible()
    expect(resources.get_by_role("link", name="988lifeline.org").first).to_have_attribute("href", "https://988lifeline.org/")
    assert double.calls == calls, "the agent was asked about a crisis message"


def test_a_session_ended_elsewhere_returns_to_the_log_in_form(server, page, context):
    sign_up(page, server.url)
    token = page.evaluate("sessionStorage.getItem('ifs-guide.token')")
    other = context.new_page()
    other.goto(server.url)
    status = other.evaluate("""async (token) => (await fetch('/api/v1/logout',
        {method: 'POST', headers: {Authorization: 'Bearer ' + token}})).status""", token)
    assert status == 204
    send(page, "Are you still there?")
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    expect(page.locator("#auth-error")).to_have_text("Your session has ended. Log in again.")
    assert page.evaluate("sessionStorage.getItem('ifs-guide.token')") is None


# Turns through the API with the page's own token (the double answers buffered turns at once).
SEED = """async ([dialogues, turns]) => {
  const headers = {Authorization: 'Bearer ' + sessionStorage.getItem('ifs-guide.token'),
                   'Content-Type': 'application/json'};
  const say = async (body) => {
    const response = await fetch('/api/v1/dialogue', {method: 'POST', headers, body: JSON.stringify(body)});
    if (!response.ok) throw new Error(await response.text());
    return response.json();
  };
  for (let i = 1; i <= dialogues; i++) await say({message: `ECHO dialogue ${i}`});
  let id = null;
  for (let i = 1; i <= turns; i++) id = (await say({message: `ECHO turn ${i}`, dialogue_id: id || undefined})).dialogue_id;
}"""


def test_the_list_and_a_long_dialogue_load_more_as_they_scroll(server, page):
    sign_up(page, server.url)
    page.evaluate(SEED, [24, 35])
    page.reload()
    dialogues = page.get_by_role("navigation", name="Dialogues").get_by_role("link")
    expect(dialogues).to_have_count(20)
    expect(dialogues.first).to_have_text("ECHO turn 1")
    page.locator("#dialogues-more").scroll_into_view_if_needed()
    expect(dialogues).to_have_count(25)
    expect(dialogues.last).to_have_text("ECHO dialogue 1")

    # Opened at its end; older messages come as the log scrolls up, in order.
    dialogues.first.click()
    messages = page.get_by_role("log", name="Messages").locator("li.msg")
    expect(messages).to_have_count(30)
    expect(messages.last.locator(".text")).to_have_text("turn 35")
    for count in (60, 70):
        page.locator("#log").evaluate("log => { log.scrollTop = 0; }")
        expect(messages).to_have_count(count)
    expect(messages.first.locator(".text")).to_have_text("ECHO turn 1")
    seqs = messages.evaluate_all("items => items.map(i => Number(i.dataset.seq))")
    assert seqs == list(range(1, 71))


def status_text(page):
    text = page.get_by_role("status").inner_text()
    assert "{" not in text and "error" not in text.lower().split(), f"not words: {text!r}"
    return text


def test_errors_are_told_in_words_and_a_lost_stream_offers_a_reload(own_server, tight_server, page):
    sign_up(page, own_server.url)
    # The agent is full: the person reads why and when to try again, never the JSON.
    send(page, "BUSY are you there?")
    expect(page.get_by_role("status")).to_contain_text("answering other people")
    status_text(page)
    # The message itself was kept, and the dialogue is open on it.
    expect(page.get_by_role("log", name="Messages").locator("li.user .text")).to_have_text("BUSY are you there?")

    # The connection drops while the reply streams: the page says so and offers to reload.
    page.get_by_role("button", name="New dialogue").click()
    send(page, "A message whose reply is cut off")
    expect(replies(page)).to_have_count(1)
    expect(replies(page).last.locator(".text")).to_contain_text("Thank you")
    own_server.crash()
    expect(page.get_by_role("status")).to_contain_text("The connection was lost")
    expect(replies(page).last.locator(".note")).to_have_text("The connection was lost during this reply.")
    own_server.start()
    page.get_by_role("button", name="Reload the dialogue").click()
    # What the server had stored before it went: the message, which stays.
    expect(page.get_by_role("log", name="Messages").locator("li.user .text")).to_have_text(
        "A message whose reply is cut off")

    # Today's allowance spent: when it renews, in words.
    sign_up(page, tight_server.url)
    send(page, "One turn")
    finished(page)
    send(page, "And another")
    expect(page.get_by_role("status")).to_contain_text("today's allowance")
    assert re.search(r"renews in \d+ (hours?|minutes|seconds?)", status_text(page)), status_text(page)


def test_the_first_message_flow_works_with_the_keyboard_alone(server, page):
    page.goto(server.url)
    # The page starts in the Email field.
    page.keyboard.type(email())
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")  # past Log in, to Sign up
    expect(page.get_by_role("button", name="Sign up")).to_be_focused()
    page.keyboard.press("Enter")
    message = page.get_by_label("Message", exact=True)
    expect(message).to_be_focused()
    # Shift+Enter is a new line, Enter sends.
    page.keyboard.type("One line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("and another")
    assert message.input_value() == "One line\nand another"
    page.keyboard.press("Enter")
    expect(replies(page)).to_have_count(1)
    expect(replies(page).last.locator(".text")).to_contain_text("Thank you")
    # Escape stops the reply.
    page.keyboard.press("Escape")
    expect(replies(page).last.locator(".note")).to_have_text(re.compile("^Stopped"))
    assert page.get_by_role("log", name="Messages").locator("li.user .text").inner_text() == "One line\nand another"
    # Every control is reachable by Tab, with a visible focus ring.
    seen = set()
    for _ in range(40):
        page.keyboard.press("Tab")
        name = page.evaluate("""() => { const e = document.activeElement;
            if (e === document.body) return null;  // past the last control, before the first
            const outline = getComputedStyle(e).outlineStyle;
            return [e.getAttribute('aria-label') || e.textContent.trim() || e.id, outline]; }""")
        if name is None:
            continue
        assert name[1] != "none", f"{name[0]} is focused without a visible outline"
        seen.add(name[0])
    for control in ["New dialogue", "Rename", "Export", "Delete", "Log out", "Delete account", "Send"]:
        assert control in seen, (control, seen)


AXE_SERIOUS = """async () => {
  const results = await axe.run(document, {resultTypes: ['violations']});
  return results.violations.filter(v => v.impact === 'serious' || v.impact === 'critical')
    .map(v => `${v.id}: ${v.help} at ${v.nodes.map(n => n.target.join(' ')).join(', ')}`);
}"""


def axe_violations(page, axe_source):
    page.evaluate(axe_source)
    return page.evaluate(AXE_SERIOUS)


def test_axe_finds_no_serious_problems_in_either_colour_scheme(server, browser, axe_source):
    for scheme in ["light", "dark"]:
        context = browser.new_context(color_scheme=scheme, reduced_motion="reduce", locale="en-US")
        page = context.new_page()
        page.goto(server.url)
        expect(page.get_by_role("button", name="Log in")).to_be_visible()
        assert axe_violations(page, axe_source) == [], f"log-in form, {scheme}"
        sign_up(page, server.url)
        send(page, "Hello there")
        expect(replies(page)).to_have_count(1)
        expect(replies(page).last.locator(".text")).to_contain_text("Thank you")
        assert axe_violations(page, axe_source) == [], f"streaming reply, {scheme}"
        finished(page)
        assert axe_violations(page, axe_source) == [], f"open dialogue, {scheme}"
        context.close()


def test_a_small_phone_scrolls_only_vertically_and_keeps_the_composer_in_view(server, browser):
    context = browser.new_context(viewport={"width": 360, "height": 740}, locale="en-US", is_mobile=True,
                                  has_touch=True)
    page = context.new_page()
    sign_up(page, server.url)
    send(page, "ECHO " + "a" * 400 + " https://example.com/" + "very-long-path/" * 20)
    finished(page)
    send(page, "And a second, ordinary message.")
    finished(page)
    widths = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert widths[0] <= widths[1], f"horizontal scroll: {widths}"
    assert page.evaluate("document.getElementById('log').scrollWidth <= document.getElementById('log').clientWidth")
    for name in ["Send"]:
        expect(page.get_by_role("button", name=name)).to_be_in_viewport()
    expect(page.get_by_label("Message", exact=True)).to_be_in_viewport()
    context.close()


def test_the_page_talks_to_the_real_model(model_server, page):
    """The same page on `make run`'s setup: the small model answers in-process and its reply
    streams in. With WEB_SCREENSHOT set, this is also the README's screenshot."""
    sign_up(page, model_server.url)
    send(page, "Hello! Can you help me notice the different parts of me?")
    lengths = page.evaluate(SAMPLE_FRAMES)
    assert len(set(n for n in lengths if n)) >= 2, lengths
    finished(page)
    assert replies(page).last.locator(".text").inner_text().strip()
    screenshot = os.environ.get("WEB_SCREENSHOT")
    if screenshot:
        page.set_viewport_size({"width": 1000, "height": 720})
        page.evaluate("document.getElementById('log').scrollTop = 1e9")
        page.screenshot(path=screenshot)
