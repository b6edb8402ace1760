// The session in process, as chasquid tests its connection: a real client
// socket on loopback, a scripted upstream (command -> reply) and a scripted
// policy (stage -> verdict), no Python and no upstream server.
#include <gtest/gtest.h>

#include <chrono>
#include <deque>
#include <filesystem>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <tuple>
#include <vector>

#include "asio.hpp"
#include "log.hpp"
#include "session/session.hpp"

namespace portcullis {
namespace {

using namespace std::chrono_literals;
using smtp::reply;

// What a session's log lines show of client text: printable ASCII and 8-bit
// octets as they are, control characters, DEL and the backslash as \xNN, at
// most `max` octets and "..." after them.
TEST(Printable, Table) {
  using namespace std::literals;
  const std::vector<std::tuple<std::string, std::size_t, std::string>> cases = {
      {"", 200, ""},
      {"alice@example.test", 200, "alice@example.test"},
      {"a\r\nb", 200, "a\\x0d\\x0ab"},
      {"\0x"s, 200, "\\x00x"},
      {"back\\slash", 200, "back\\x5cslash"},
      {"del\x7f", 200, "del\\x7f"},
      {"Gr\xc3\xbc\xc3\x9f" "e", 200, "Gr\xc3\xbc\xc3\x9f" "e"},
      {"abcdef", 3, "abc..."},
      {"ab\ncdef", 3, "ab\\x0a..."},
      {"abc", 3, "abc"},
  };
  for (const auto& [in, max, want] : cases) EXPECT_EQ(printable(in, max), want) << in;
}

// What the scripted upstream saw, and what it answers. Shared with the test thread.
struct upstream_script {
  std::mutex mutex;
  std::vector<std::string> commands;            // "MAIL <a>", "RCPT <b>", "DATA", "RSET", "QUIT"
  std::map<std::string, std::deque<reply>> replies;  // by verb; default 250
  std::string throw_on;                          // verb whose call throws (an exception escaping the session)
  std::string last_message;

  void record(const std::string& c) {
    std::lock_guard lock(mutex);
    commands.push_back(c);
  }
  reply answer(const std::string& verb) {
    std::lock_guard lock(mutex);
    if (verb == throw_on) throw std::runtime_error("scripted upstream failure at " + verb);
    auto& q = replies[verb];
    if (q.empty()) return verb == "DATA" ? reply{250, "2.0.0", "Ok: queued as T1"} : reply{250, "", "Ok"};
    auto r = q.front();
    q.pop_front();
    return r;
  }
  std::vector<std::string> seen() {
    std::lock_guard lock(mutex);
    return commands;
  }
};

class scripted_upstream final : public upstream {
 public:
  explicit scripted_upstream(std::shared_ptr<upstream_script> s) : s_(std::move(s)) {}
  awaitable<reply> mail(const smtp::address& sender, const mail_options& o) override {
    s_->record("MAIL <" + sender.str() + ">" + (o.body_8bit ? " BODY=8BITMIME" : ""));
    co_return s_->answer("MAIL");
  }
  awaitable<reply> rcpt(const smtp::address& r) override {
    s_->record("RCPT <" + r.str() + ">");
    co_return s_->answer("RCPT");
  }
  awaitable<reply> data(std::string_view, const message_store& message) override {
    s_->record("DATA");
    {
      std::lock_guard lock(s_->mutex);
      s_->last_message = message.read_all();
    }
    co_return s_->answer("DATA");
  }
  awaitable<void> reset() override {
    s_->record("RSET");
    co_return;
  }
  bool connected() const override { return true; }
  awaitable<void> quit() override {
    s_->record("QUIT");
    co_return;
  }

 private:
  std::shared_ptr<upstream_script> s_;
};

// A policy whose verdicts the test sets per stage; it counts disconnects.
class scripted_policy final : public policy {
 public:
  std::function<verdict(const transaction&, const smtp::address&)> rcpt;
  std::function<verdict(const transaction&)> data;
  std::atomic<int> disconnects{0};

  awaitable<verdict> on_connect(const connection_state&) override { co_return verdict{}; }
  awaitable<verdict> on_helo(const connection_state&, std::string_view) override { co_return verdict{}; }
  awaitable<verdict> on_auth(const connection_state&, std::string_view, std::string_view, std::string_view) override {
    co_return verdict{};
  }
  awaitable<verdict> on_mail(const connection_state&, const transaction&) override { co_return verdict{}; }
  awaitable<verdict> on_rcpt(const connection_state&, const transaction& tx, const smtp::address& r) override {
    co_return rcpt ? rcpt(tx, r) : verdict{};
  }
  awaitable<verdict> on_data(const connection_state&, const transaction& tx, message_ptr) override {
    co_return data ? data(tx) : verdict{};
  }
  awaitable<void> on_disconnect(const connection_state&) override {
    ++disconnects;
    co_return;
  }
};

smtp::address addr(const std::string& s) { return *smtp::parse_mailbox(s, false); }

// One daemon-side session on loopback, and a blocking client for the test.
class harness {
 public:
  // `client_rcvbuf`: the client's receive buffer, set before connecting (so
  // that the window is small and the session's writes block).
  explicit harness(std::function<void(config&)> tweak = {}, int client_rcvbuf = 0) {
    auto cfg = std::make_shared<config>();
    cfg->server.hostname = "mx.test";
    if (tweak) tweak(*cfg);
    auto g = std::make_shared<generation>();
    g->cfg = cfg;
    g->pol = pol;
    g->relay = std::make_shared<relay_guard>(cfg->relay);
    g->proxy_trusted = std::make_shared<network_list>(cfg->server.proxy_trusted);
    g->make_upstream = [s = script](const session_log&, const connection_state&, asio::any_io_executor) {
      return std::make_unique<scripted_upstream>(s);
    };
    env = std::make_unique<session_environment>(g);
    acceptor.open(tcp::v4());
    acceptor.bind({asio::ip::make_address("127.0.0.1"), 0});
    acceptor.listen();
    acceptor.async_accept(asio::make_strand(io), [this](boost::system::error_code ec, tcp::socket s) {
      if (ec) return;
      const auto peer = s.remote_endpoint();
      sess = std::make_shared<session>(std::move(s), peer, "TESTSESSION1", *env, false);
      asio::co_spawn(sess->executor(), sess->run(), [this](std::exception_ptr e) {
        escaped = static_cast<bool>(e);
        ended.set_value();
      });
    });
    thread = std::thread([this] { io.run(); });
    client.open(tcp::v4());
    if (client_rcvbuf) client.set_option(asio::socket_base::receive_buffer_size(client_rcvbuf));
    client.connect(acceptor.local_endpoint());
    EXPECT_EQ(read_reply().substr(0, 4), "220 ");
  }
  ~harness() {
    boost::system::error_code ignored;
    client.close(ignored);
    if (ended_future.wait_for(10s) != std::future_status::ready) ADD_FAILURE() << "the session did not end";
    io.stop();
    thread.join();
  }

  void send(const std::string& s) { asio::write(client, asio::buffer(s)); }
  // One whole reply (all its lines), "" when the connection closed first.
  std::string read_reply() {
    std::string out;
    for (;;) {
      boost::system::error_code ec;
      const auto n = asio::read_until(client, in, "\r\n", ec);
      if (ec) return out;
      std::string line(asio::buffers_begin(in.data()), asio::buffers_begin(in.data()) + n);
      in.consume(n);
      out += line;
      if (line.size() >= 4 && line[3] == ' ') return out;
    }
  }
  std::string say(const std::string& line) {
    send(line + "\r\n");
    return read_reply();
  }
  // Whether a reply arrives within `wait` (without reading past it).
  bool reply_within(std::chrono::milliseconds wait) {
    auto f = std::async(std::launch::async, [this] { return read_reply(); });
    if (f.wait_for(wait) != std::future_status::ready) return false;
    last = f.get();
    return true;
  }
  // EHLO, one message from a@ to b@ that the upstream takes; what the upstream saw.
  std::vector<std::string> one_message() {
    say("EHLO client.test");
    say("MAIL FROM:<a@example.test>");
    say("RCPT TO:<b@example.test>");
    say("DATA");
    EXPECT_EQ(say("Subject: x\r\n\r\nhello\r\n."), "250 2.0.0 Ok: queued as T1\r\n");
    return script->seen();
  }
  bool session_ended_within(std::chrono::seconds wait) { return ended_future.wait_for(wait) == std::future_status::ready; }

  std::shared_ptr<upstream_script> script = std::make_shared<upstream_script>();
  std::shared_ptr<scripted_policy> pol = std::make_shared<scripted_policy>();
  asio::io_context io;
  tcp::acceptor acceptor{io};
  std::unique_ptr<session_environment> env;
  std::shared_ptr<session> sess;
  std::promise<void> ended;
  std::shared_future<void> ended_future = ended.get_future().share();
  bool escaped = false;
  std::thread thread;
  asio::io_context client_io;
  tcp::socket client{client_io};
  asio::streambuf in;
  std::string last;
};

TEST(session, relays_a_transaction_in_lock_step) {
  harness h;
  EXPECT_EQ(h.say("EHLO client.test").substr(0, 4), "250-");
  EXPECT_EQ(h.say("MAIL FROM:<a@example.test>"), "250 2.1.0 Ok\r\n");
  EXPECT_EQ(h.say("RCPT TO:<b@example.test>"), "250 2.1.5 Ok\r\n");
  EXPECT_EQ(h.say("DATA").substr(0, 4), "354 ");
  EXPECT_EQ(h.say("Subject: x\r\n\r\nhello\r\n."), "250 2.0.0 Ok: queued as T1\r\n");
  EXPECT_EQ(h.say("QUIT").substr(0, 4), "221 ");
  ASSERT_TRUE(h.session_ended_within(5s));
  EXPECT_EQ(h.script->seen(), (std::vector<std::string>{"MAIL <a@example.test>", "RCPT <b@example.test>", "DATA", "QUIT"}));
  EXPECT_EQ(h.pol->disconnects, 1);
}

// Issue 7 A: replies were written only once the input buffer was empty, so a
// stream of pipelined commands (always ending in a partial line) was never answered.
TEST(session, answers_pipelined_commands_while_a_partial_line_waits) {
  harness h;
  h.say("EHLO client.test");
  h.send("NOOP\r\nNOOP\r\nNO");
  ASSERT_TRUE(h.reply_within(3000ms)) << "replies held back behind a partial command";
  EXPECT_EQ(h.last, "250 2.0.0 Ok\r\n");
  EXPECT_EQ(h.read_reply(), "250 2.0.0 Ok\r\n");
  EXPECT_EQ(h.say("OP"), "250 2.0.0 Ok\r\n");
}

// Found by ASan on the test below: EHLO ended the transaction, which gave
// back the grown input buffer while the command's argument still pointed
// into it. The buffer is now only given back between commands.
TEST(session, ehlo_at_the_end_of_a_large_pipelined_batch_keeps_its_argument) {
  harness h;
  std::string batch;
  while (batch.size() < 3 * 4096) batch += "NOOP\r\n";
  h.send(batch + "EHLO last.client.test\r\n");
  for (std::size_t i = 0; i < batch.size() / 6; ++i) ASSERT_EQ(h.read_reply(), "250 2.0.0 Ok\r\n");
  EXPECT_NE(h.read_reply().find("Hello last.client.test "), std::string::npos);
}

// Issue 7 A: a client that writes and never reads is not read forever (the
// replies are bounded; the write times out and the session ends).
TEST(session, stops_reading_a_client_that_does_not_read_its_replies) {
  harness h([](config& c) { c.server.idle_timeout = std::chrono::seconds(1); });
  h.client.non_blocking(true);
  std::string burst;
  for (int i = 0; i < 1000; ++i) burst += "EHLO client.test\r\n";
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  std::size_t sent = 0;
  bool refused = false;
  while (std::chrono::steady_clock::now() < deadline) {
    boost::system::error_code ec;
    sent += h.client.write_some(asio::buffer(burst), ec);
    if (ec == asio::error::would_block) {
      std::this_thread::sleep_for(10ms);
      if (h.session_ended_within(0s)) break;
      continue;
    }
    if (ec) {
      refused = true;
      break;
    }
  }
  EXPECT_TRUE(refused || h.session_ended_within(5s)) << "the session kept reading a client that never reads";
  // What it took in is bounded by the socket buffers and our reply limit, not the client's stamina.
  EXPECT_LT(sent, std::size_t(64) << 20);
}

// Issue 7 item 4: an exception inside the session still tidies up: the
// upstream gets QUIT and the policy its on_disconnect.
TEST(session, cleans_up_when_an_exception_escapes_a_command) {
  harness h;
  h.script->throw_on = "RCPT";
  h.say("EHLO client.test");
  h.say("MAIL FROM:<a@example.test>");
  h.send("RCPT TO:<b@example.test>\r\n");
  ASSERT_TRUE(h.session_ended_within(5s));
  EXPECT_FALSE(h.escaped);
  EXPECT_EQ(h.pol->disconnects, 1);
  const auto seen = h.script->seen();
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen.back(), "QUIT");
}

// Issue 7 items 8 and G: discarded recipients and a redirect's extra
// targets count against max_recipients.
TEST(session, discarded_recipients_count_against_max_recipients) {
  harness h([](config& c) { c.server.max_recipients = 2; });
  h.pol->rcpt = [](const transaction&, const smtp::address&) {
    verdict v;
    v.what = verdict::kind::discard;
    return v;
  };
  h.say("EHLO client.test");
  h.say("MAIL FROM:<a@example.test>");
  EXPECT_EQ(h.say("RCPT TO:<b1@example.test>"), "250 2.1.5 Ok\r\n");
  EXPECT_EQ(h.say("RCPT TO:<b2@example.test>"), "250 2.1.5 Ok\r\n");
  EXPECT_EQ(h.say("RCPT TO:<b3@example.test>"), "452 4.5.3 Too many recipients\r\n");
}

TEST(session, a_redirect_fan_out_counts_against_max_recipients) {
  harness h([](config& c) { c.server.max_recipients = 3; });
  h.pol->rcpt = [](const transaction&, const smtp::address& r) {
    verdict v;
    if (r.str() == "list@example.test") {
      v.what = verdict::kind::redirect;
      v.redirect_to = {addr("m1@example.test"), addr("m2@example.test"), addr("m3@example.test")};
    }
    return v;
  };
  h.say("EHLO client.test");
  h.say("MAIL FROM:<a@example.test>");
  EXPECT_EQ(h.say("RCPT TO:<x@example.test>"), "250 2.1.5 Ok\r\n");
  EXPECT_EQ(h.say("RCPT TO:<list@example.test>"), "452 4.5.3 Too many recipients\r\n");
  for (const auto& c : h.script->seen()) EXPECT_EQ(c.find("RCPT <m"), std::string::npos) << c;
}

// Issue 7 G: temporary refusals count as errors too (each may cost an upstream round trip).
TEST(session, temporary_refusals_count_against_max_errors) {
  harness h([](config& c) { c.server.max_errors = 3; });
  for (int i = 0; i < 3; ++i) h.script->replies["RCPT"].push_back(reply{450, "4.2.0", "Busy"});
  h.say("EHLO client.test");
  h.say("MAIL FROM:<a@example.test>");
  EXPECT_EQ(h.say("RCPT TO:<b@example.test>"), "450 4.2.0 Busy\r\n");
  EXPECT_EQ(h.say("RCPT TO:<b@example.test>"), "450 4.2.0 Busy\r\n");
  EXPECT_EQ(h.say("RCPT TO:<b@example.test>"), "450 4.2.0 Busy\r\n");
  const auto last = h.read_reply();
  EXPECT_NE(last.find("421 4.7.0"), std::string::npos) << last;
  EXPECT_TRUE(h.session_ended_within(5s));
}

// Issue 7 item 6: shutdown interrupts only a session waiting for a command;
// one receiving a message finishes it, then gets 421.
TEST(session, stop_lets_a_message_in_progress_finish) {
  harness h;
  h.say("EHLO client.test");
  h.say("MAIL FROM:<a@example.test>");
  h.say("RCPT TO:<b@example.test>");
  EXPECT_EQ(h.say("DATA").substr(0, 4), "354 ");
  h.send("Subject: x\r\n\r\nfirst half\r\n");
  std::this_thread::sleep_for(100ms);
  asio::post(h.sess->executor(), [s = h.sess] { s->stop(); });
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(h.say("second half\r\n."), "250 2.0.0 Ok: queued as T1\r\n");
  EXPECT_NE(h.read_reply().find("421 4.3.2"), std::string::npos);
  EXPECT_TRUE(h.session_ended_within(5s));
}

// Issue 7 item 6: shutdown used to cancel whatever was pending on the
// socket, a write of replies included, and so cut a busy session off.
TEST(session, stop_does_not_cut_off_a_write_in_progress) {
  harness h({}, 4096);
  constexpr int commands = 50000;  // some 9 MB of replies: more than the socket buffers hold
  std::string batch;
  for (int i = 0; i < commands; ++i) batch += "EHLO client.test\r\n";
  std::thread writer([&] {
    boost::system::error_code ec;
    asio::write(h.client, asio::buffer(batch), ec);
  });
  std::this_thread::sleep_for(500ms);  // the session now waits for the client to read its replies
  asio::post(h.sess->executor(), [s = h.sess] { s->stop(); });
  std::this_thread::sleep_for(200ms);
  int answered = 0;
  std::string last;
  for (;;) {
    last = h.read_reply();
    if (last.rfind("250-", 0) != 0) break;
    ++answered;
  }
  writer.join();
  // Every command read before the stop is answered in full, then 421.
  EXPECT_GT(answered, 0);
  EXPECT_NE(last.find("421 4.3.2"), std::string::npos) << "after " << answered << " replies: " << last;
}

TEST(session, stop_closes_a_session_waiting_for_a_command) {
  harness h;
  h.say("EHLO client.test");
  std::this_thread::sleep_for(50ms);
  asio::post(h.sess->executor(), [s = h.sess] { s->stop(); });
  EXPECT_NE(h.read_reply().find("421 4.3.2"), std::string::npos);
  EXPECT_TRUE(h.session_ended_within(5s));
}

// A verdict's rewrites are applied by the session, whatever the verdict.
TEST(session, applies_a_verdicts_rewrites_in_its_proceed_step) {
  harness h;
  h.pol->rcpt = [](const transaction&, const smtp::address& r) {
    verdict v;
    v.sender = addr("srs@fwd.example.test");
    return v;
  };
  const auto seen = h.one_message();
  // The envelope changed after MAIL went upstream: redone before DATA.
  EXPECT_NE(std::find(seen.begin(), seen.end(), "MAIL <srs@fwd.example.test>"), seen.end());
}

// RFC 6152 §3: an edit that brings 8-bit text into a 7-bit transaction is declared upstream.
TEST(session, an_edit_that_adds_8bit_text_declares_8bitmime_upstream) {
  harness h;
  h.pol->data = [](const transaction&) {
    verdict v;
    v.message = std::make_shared<const std::string>("Subject: x\r\n\r\nGr\xc3\xbc\xc3\x9f" "e\r\n");
    return v;
  };
  const auto seen = h.one_message();
  EXPECT_NE(std::find(seen.begin(), seen.end(), "MAIL <a@example.test> BODY=8BITMIME"), seen.end());
}

// The message store's memory goes back to the budget however the message
// ends: delivered, the client lost mid-DATA, a DATA timeout.
bool eventually(const std::function<bool()>& f) {
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (!f()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

TEST(session, message_memory_comes_back_however_the_message_ends) {
  enum class ending { delivered, client_lost, data_timeout };
  for (const auto end : {ending::delivered, ending::client_lost, ending::data_timeout}) {
    SCOPED_TRACE(static_cast<int>(end));
    auto h = std::make_unique<harness>([](config& c) { c.server.data_timeout = std::chrono::seconds(1); });
    const auto memory = h->env->messages_memory();
    h->say("EHLO client.test");
    h->say("MAIL FROM:<a@example.test>");
    h->say("RCPT TO:<b@example.test>");
    EXPECT_EQ(h->say("DATA").substr(0, 4), "354 ");
    h->send("Subject: x\r\n\r\nhello\r\n");
    ASSERT_TRUE(eventually([&] { return memory->in_use() > 0; })) << "the message is not in memory";
    switch (end) {
      case ending::delivered:
        EXPECT_EQ(h->say("."), "250 2.0.0 Ok: queued as T1\r\n");
        EXPECT_EQ(memory->in_use(), 0u);  // given back before the reply
        break;
      case ending::client_lost:
        h.reset();  // closes the client, waits for the session's end
        EXPECT_EQ(memory->in_use(), 0u);
        break;
      case ending::data_timeout:
        EXPECT_EQ(h->read_reply().substr(0, 10), "421 4.4.2 ");
        EXPECT_TRUE(eventually([&] { return memory->in_use() == 0; }));
        break;
    }
  }
}

// A spill file that cannot be made: 452 4.3.1 for that message; the session goes on.
TEST(session, a_message_that_cannot_be_stored_is_452_and_the_session_goes_on) {
  const auto missing = std::filesystem::temp_directory_path() / "portcullis-session-test-no-such-dir";
  harness h([&](config& c) {
    c.server.message_memory_threshold = 4;
    c.server.message_spill_dir = missing;
  });
  h.say("EHLO client.test");
  h.say("MAIL FROM:<a@example.test>");
  h.say("RCPT TO:<b@example.test>");
  h.say("DATA");
  EXPECT_EQ(h.say("Subject: x\r\n\r\nhello\r\n."), "452 4.3.1 Insufficient system storage, try again later\r\n");
  EXPECT_EQ(h.script->seen(), (std::vector<std::string>{"MAIL <a@example.test>", "RCPT <b@example.test>", "RSET"}));
  EXPECT_EQ(h.env->messages_memory()->in_use(), 0u);
  EXPECT_EQ(h.say("MAIL FROM:<a@example.test>"), "250 2.1.0 Ok\r\n");
}

}  // namespace
}  // namespace portcullis
