// The message store on real temporary files: where a message is held (memory
// or an unlinked file) around the threshold and the budget, that every byte
// reads back as written, that the budget comes back, and that a spill file
// that cannot be made or written is a failure the session can report.
#include "store/message_store.hpp"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <filesystem>
#include <random>
#include <thread>
#include <vector>

namespace portcullis {
namespace {

namespace fs = std::filesystem;

std::string pattern(std::size_t n, unsigned seed = 1) {
  std::mt19937 gen(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(gen());  // every byte value, NUL and CR/LF included
  return s;
}

// Everything a reader returns, in chunks of `chunk`.
std::string read_back(const message_store& m, std::size_t chunk) {
  std::string out;
  message_store::reader r(m, chunk);
  for (auto c = r.next(); !c.empty(); c = r.next()) out.append(c);
  EXPECT_FALSE(r.failed()) << r.error();
  EXPECT_TRUE(r.at_end());
  return out;
}

// Descriptors of this process open on deleted files in `dir`.
std::size_t unlinked_files_in(const fs::path& dir) {
  std::size_t n = 0;
  for (const auto& e : fs::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    const auto target = fs::read_symlink(e.path(), ec).string();
    if (!ec && target.starts_with(dir.string() + "/") && target.ends_with(" (deleted)")) ++n;
  }
  return n;
}

class MessageStore : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("store_test." + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::shared_ptr<message_memory> memory(std::size_t limit) { return std::make_shared<message_memory>(limit); }
  fs::path dir_;
};

// Sizes around the threshold, written in pieces of several sizes: in memory
// up to the threshold itself, in a file past it; byte-exact either way.
TEST_F(MessageStore, SizesAroundTheThreshold) {
  constexpr std::size_t threshold = 10000;
  struct row {
    std::size_t size;
    std::size_t piece;  // append() calls of this many bytes
    bool spilled;
  };
  const row rows[] = {
      {0, 1, false},          {1, 1, false},
      {threshold - 1, 7, false}, {threshold, 4096, false}, {threshold, threshold, false},
      {threshold + 1, 7, true},  {threshold + 1, threshold + 1, true},
      {3 * threshold, 1, true},  {200000, 65536, true},  {200000, 200000, true},
      {1 << 20, 100000, true},   // pieces larger than the staging buffer go straight to the file
  };
  for (const auto& r : rows) {
    SCOPED_TRACE("size " + std::to_string(r.size) + " piece " + std::to_string(r.piece));
    auto mem = memory(1 << 30);
    const std::string want = pattern(r.size, static_cast<unsigned>(r.size));
    {
      message_store m(mem, {threshold, dir_});
      for (std::size_t at = 0; at < want.size(); at += r.piece)
        ASSERT_TRUE(m.append(std::string_view(want).substr(at, r.piece)));
      ASSERT_TRUE(m.seal());
      EXPECT_EQ(m.spilled(), r.spilled);
      EXPECT_EQ(m.why_spilled(), r.spilled ? message_store::spill_reason::threshold : message_store::spill_reason::none);
      EXPECT_EQ(m.size(), r.size);
      EXPECT_LE(mem->in_use(), r.spilled ? 0 : threshold);
      EXPECT_EQ(read_back(m, message_store::reader::default_chunk), want);
      EXPECT_EQ(read_back(m, 1000), want);
      if (r.size <= 5000) {
        EXPECT_EQ(read_back(m, 1), want);  // a pread per byte: small ones only
      }
      EXPECT_EQ(m.read_all(), want);
    }
    EXPECT_EQ(mem->in_use(), 0u);  // given back when the store goes
  }
}

// One budget for all stores: once it is taken, the next message spills even
// if small; freeing a store gives its bytes back; a message that spills
// gives back what it held in memory at once.
TEST_F(MessageStore, BudgetExhaustionAndRelease) {
  auto mem = memory(16 * 1024);
  spill_settings s{64 * 1024, dir_};
  auto a = std::make_unique<message_store>(mem, s);
  const std::string first = pattern(12 * 1024);
  for (std::size_t at = 0; at < first.size(); at += 1024) ASSERT_TRUE(a->append(std::string_view(first).substr(at, 1024)));
  EXPECT_FALSE(a->spilled());
  EXPECT_EQ(mem->in_use(), 16u * 1024);  // 4 KiB doubled twice: counted as allocated, not as used

  message_store b(mem, s);
  ASSERT_TRUE(b.append("small"));
  EXPECT_TRUE(b.spilled());
  EXPECT_EQ(b.why_spilled(), message_store::spill_reason::budget);
  ASSERT_TRUE(b.seal());
  EXPECT_EQ(b.read_all(), "small");
  EXPECT_EQ(mem->in_use(), 16u * 1024);

  // a grows past what is left: it spills, and its 16 KiB come back.
  const std::string more = pattern(8 * 1024, 2);
  ASSERT_TRUE(a->append(more));
  EXPECT_TRUE(a->spilled());
  EXPECT_EQ(a->why_spilled(), message_store::spill_reason::budget);
  EXPECT_EQ(mem->in_use(), 0u);
  ASSERT_TRUE(a->seal());
  EXPECT_EQ(a->read_all(), first + more);

  message_store c(mem, s);
  ASSERT_TRUE(c.append("small again"));
  EXPECT_FALSE(c.spilled());
  EXPECT_EQ(mem->in_use(), 4096u);
  a.reset();
  EXPECT_EQ(mem->in_use(), 4096u);

  // A lower limit (SIGHUP) applies to what comes next; what is held stays counted.
  mem->set_limit(0);
  message_store d(mem, s);
  ASSERT_TRUE(d.append("x"));
  EXPECT_TRUE(d.spilled());
}

// Sessions on several threads share the budget: it is never overdrawn, and
// all of it comes back.
TEST_F(MessageStore, BudgetAcrossThreads) {
  auto mem = memory(64 * 1024);
  std::atomic<std::size_t> peak{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        message_store m(mem, {32 * 1024, dir_});
        const std::string body = pattern(static_cast<std::size_t>((i * 997 + t * 131) % 20000), i);
        for (std::size_t at = 0; at < body.size(); at += 1000) m.append(std::string_view(body).substr(at, 1000));
        std::size_t seen = mem->in_use();
        std::size_t p = peak.load();
        while (seen > p && !peak.compare_exchange_weak(p, seen)) {}
        m.seal();
        if (m.read_all() != body) ADD_FAILURE() << "read back differs";
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_LE(peak.load(), 64u * 1024);
  EXPECT_EQ(mem->in_use(), 0u);
}

// The spill file has no name: the directory stays empty, the descriptor
// points at a deleted file, and it is closed when the store goes.
TEST_F(MessageStore, SpillFileIsUnlinked) {
  auto mem = memory(1 << 20);
  {
    message_store m(mem, {0, dir_});  // threshold 0: every message goes to a file
    ASSERT_TRUE(m.append(pattern(100000)));
    ASSERT_TRUE(m.seal());
    EXPECT_TRUE(m.spilled());
    EXPECT_TRUE(fs::is_empty(dir_));
    EXPECT_EQ(unlinked_files_in(dir_), 1u);
  }
  EXPECT_EQ(unlinked_files_in(dir_), 0u);
}

// A spill directory that is not there: the store fails, says why, holds no
// memory and reads nothing.
TEST_F(MessageStore, SpillDirectoryMissing) {
  auto mem = memory(1 << 20);
  message_store m(mem, {1000, dir_ / "gone"});
  ASSERT_TRUE(m.append(pattern(999)));
  EXPECT_FALSE(m.append(pattern(10)));
  EXPECT_TRUE(m.failed());
  EXPECT_NE(m.error().find((dir_ / "gone").string()), std::string::npos) << m.error();
  EXPECT_FALSE(m.append("more"));
  EXPECT_FALSE(m.seal());
  EXPECT_EQ(mem->in_use(), 0u);
  message_store::reader r(m);
  EXPECT_TRUE(r.next().empty());
  EXPECT_TRUE(r.failed());
  EXPECT_THROW(m.read_all(), std::runtime_error);
}

// A write that fails once the file exists (a full disk; here the file size
// limit, which fails write(2) with EFBIG the same way).
TEST_F(MessageStore, SpillWriteFails) {
  rlimit old{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
  const auto old_handler = ::signal(SIGXFSZ, SIG_IGN);
  rlimit small = old;
  small.rlim_cur = 256 * 1024;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  auto mem = memory(1 << 20);
  message_store m(mem, {0, dir_});
  const std::string chunk = pattern(10000);
  bool ok = true;
  for (int i = 0; i < 100 && ok; ++i) ok = m.append(chunk);
  const bool sealed = m.seal();
  ::setrlimit(RLIMIT_FSIZE, &old);
  ::signal(SIGXFSZ, old_handler);
  EXPECT_FALSE(ok);
  EXPECT_FALSE(sealed);
  EXPECT_TRUE(m.failed());
  EXPECT_NE(m.error().find("cannot write"), std::string::npos) << m.error();
}

// The end of the message is the end of writing.
TEST_F(MessageStore, NoWriteAfterSeal) {
  auto mem = memory(1 << 20);
  message_store m(mem, {1000, dir_});
  ASSERT_TRUE(m.append("abc"));
  ASSERT_TRUE(m.seal());
  EXPECT_FALSE(m.append("d"));
}

// A policy's edit, already in memory: shared, not copied, not counted.
TEST_F(MessageStore, Wrap) {
  auto text = std::make_shared<const std::string>("Subject: x\r\n\r\nbody\r\n");
  auto m = message_store::wrap(text);
  EXPECT_EQ(m->size(), text->size());
  EXPECT_FALSE(m->spilled());
  message_store::reader r(*m);
  EXPECT_EQ(r.next().data(), text->data());  // a view of it
  EXPECT_EQ(m->read_all(), *text);
}


// Fields a policy put on top of the message as received: the prefix, then
// the received store's own bytes, shared (a spilled one read from its file);
// byte-exact in chunks of any size.
TEST_F(MessageStore, WithPrefix) {
  const std::string prefix = "X-Added: 1\r\nX-Other: 2\r\n";
  for (const std::size_t size : {std::size_t{0}, std::size_t{100}, std::size_t{5000}}) {
    auto mem = memory(1 << 20);
    auto received = std::make_shared<message_store>(mem, spill_settings{1000, dir_});  // past 1000: a file
    const auto body = pattern(size, 7);
    ASSERT_TRUE(received->append(body));
    ASSERT_TRUE(received->seal());
    const auto m = message_store::with_prefix(prefix, received);
    EXPECT_EQ(m->size(), prefix.size() + size);
    EXPECT_EQ(m->spilled(), received->spilled());
    for (const std::size_t chunk : {std::size_t{1}, std::size_t{7}, std::size_t{4096}})
      EXPECT_EQ(read_back(*m, chunk), prefix + body) << size << " bytes, chunks of " << chunk;
    EXPECT_EQ(m->read_all(), prefix + body);
    message_store::reader r(*m);
    EXPECT_EQ(r.next(), prefix);  // a view of the prefix first
  }
  // An empty prefix is the message itself.
  auto text = message_store::wrap(std::make_shared<const std::string>("Subject: x\r\n\r\nb\r\n"));
  EXPECT_EQ(message_store::with_prefix("", text)->read_all(), "Subject: x\r\n\r\nb\r\n");
}

// A new header section over the received message's body: the prefix, then
// the received bytes from `rest_from` on, in memory and from a file alike.
TEST_F(MessageStore, WithPrefixFromAnOffset) {
  const std::string head = "Subject: new\r\n\r\n";
  for (const std::size_t size : {std::size_t{100}, std::size_t{5000}}) {
    auto mem = memory(1 << 20);
    auto received = std::make_shared<message_store>(mem, spill_settings{1000, dir_});
    const std::string old_head = "Subject: old\r\nX-Gone: 1\r\n\r\n";
    const auto body = pattern(size, 3);
    ASSERT_TRUE(received->append(old_head + body));
    ASSERT_TRUE(received->seal());
    const auto m = message_store::with_prefix(head, received, old_head.size());
    EXPECT_EQ(m->size(), head.size() + size);
    for (const std::size_t chunk : {std::size_t{1}, std::size_t{7}, std::size_t{4096}})
      EXPECT_EQ(read_back(*m, chunk), head + body) << size << " bytes, chunks of " << chunk;
    EXPECT_EQ(m->read_all(), head + body);
    EXPECT_EQ(message_store::with_prefix(head, received, received->size())->read_all(), head);
    EXPECT_THROW(message_store::with_prefix(head, received, received->size() + 1), std::invalid_argument);
  }
}

// The header section alone: up to and with the empty line, found across
// chunks; none without one, or past the limit (the whole message is read then).
TEST_F(MessageStore, ReadHead) {
  const auto stored = [&](const std::string& text) {
    auto mem = memory(1 << 20);
    auto m = std::make_shared<message_store>(mem, spill_settings{100, dir_});  // past 100 bytes: a file
    EXPECT_TRUE(m->append(text));
    EXPECT_TRUE(m->seal());
    return m;
  };
  constexpr std::size_t limit = 1 << 20;
  const std::string fields = "Subject: x\r\n" + std::string(200, 'a') + ": b\r\n";
  EXPECT_EQ(stored(fields + "\r\n" + pattern(300000, 5))->read_head(limit), fields + "\r\n");
  EXPECT_EQ(stored(fields + "\r\nbody\r\n")->read_head(limit), fields + "\r\n");
  EXPECT_EQ(stored(fields)->read_head(limit), std::nullopt);  // no empty line
  EXPECT_EQ(stored("\r\nbody\r\n")->read_head(limit), "\r\n");
  const std::string long_head = "X: " + std::string(200000, 'h') + "\r\n\r\n";  // over several chunks
  EXPECT_EQ(stored(long_head + "body\r\n")->read_head(limit), long_head);
  EXPECT_EQ(stored(long_head + "body\r\n")->read_head(100000), std::nullopt);  // past the limit
  EXPECT_EQ(stored(long_head + "body\r\n")->head_size(long_head.size()), long_head.size());
  EXPECT_EQ(stored(long_head + "body\r\n")->head_size(long_head.size() - 1), std::string::npos);
  EXPECT_EQ(stored(fields + "\r\nbody\r\n")->head_size(limit), fields.size() + 2);
}

}  // namespace
}  // namespace portcullis
