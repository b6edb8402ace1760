// Maildir delivery on a real temporary directory: one file per transaction
// whatever its recipients, and a message in new/ is delivered even when the
// fsync of new/ fails afterwards (a 451 then would make the client send it twice).
#include "upstream/maildir_delivery.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace portcullis::maildir {
namespace {

namespace fs = std::filesystem;

smtp::address addr(const std::string& local, const std::string& domain) { return smtp::address{local, domain}; }

// A message as the session hands it over: a sealed store.
std::shared_ptr<const message_store> stored(std::string content) {
  return message_store::wrap(std::make_shared<const std::string>(std::move(content)));
}

std::vector<fs::path> files_in(const fs::path& dir) {
  std::vector<fs::path> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) out.push_back(e.path());
  return out;
}

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

class MaildirDelivery : public testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/portcullis-maildir-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    base_ = tmpl;
    root_ = base_ / "Maildir";
  }
  void TearDown() override {
    std::error_code ec;
    fs::permissions(base_, fs::perms::owner_all, ec);
    fs::remove_all(base_, ec);
  }
  fs::path base_, root_;
};

TEST(DeliveryHeaders, Table) {
  struct row {
    smtp::address sender;
    std::vector<smtp::address> recipients;
    std::string want;
  };
  const std::vector<row> cases = {
      {addr("a", "example.test"), {addr("b", "example.test")},
       "Return-Path: <a@example.test>\nDelivered-To: b@example.test\n"},
      {addr("", ""), {addr("b", "example.test")}, "Return-Path: <>\nDelivered-To: b@example.test\n"},
      // Envelope order; each address once.
      {addr("a", "x.test"), {addr("c", "y.test"), addr("b", "y.test"), addr("c", "y.test")},
       "Return-Path: <a@x.test>\nDelivered-To: c@y.test\nDelivered-To: b@y.test\n"},
      {addr("a", "x.test"), {}, "Return-Path: <a@x.test>\n"},
  };
  for (const auto& c : cases) EXPECT_EQ(delivery_headers(c.sender, c.recipients), c.want);
}

// Chunks cut anywhere, a CRLF across two of them included, give what the whole does.
TEST(LfConverter, ChunksCutAnywhere) {
  const std::string whole = "a\r\nb\rc\r\n\r\n.\r\nd\r";
  const std::string want = "a\nb\rc\n\n.\nd\r";
  for (std::size_t size = 1; size <= whole.size(); ++size) {
    lf_converter c;
    std::string out;
    for (std::size_t at = 0; at < whole.size(); at += size) c.feed(std::string_view(whole).substr(at, size), out);
    c.finish(out);
    EXPECT_EQ(out, want) << "chunks of " << size;
  }
}

TEST(ToLf, Table) {
  EXPECT_EQ(to_lf("Received: x\r\n", "Subject: s\r\n\r\nbody\r\n"), "Received: x\nSubject: s\n\nbody\n");
  EXPECT_EQ(to_lf("", "a\rb\nc\r\n"), "a\rb\nc\n");  // only CRLF pairs change
  EXPECT_EQ(to_lf("", ""), "");
}

// Item E of issue 7: 200 recipients were 200 copies; now one file lists them all.
TEST_F(MaildirDelivery, OneFilePerTransaction) {
  std::vector<smtp::address> rcpts;
  for (int i = 0; i < 200; ++i) rcpts.push_back(addr("user" + std::to_string(i), "example.test"));
  const std::string content = "Subject: hello\n\nbody\n";
  const auto d = deliver(root_, "mx.test", addr("a", "example.test"), rcpts, "", *stored(content));
  ASSERT_TRUE(d.delivered()) << d.error;
  EXPECT_EQ(d.warning, "");
  EXPECT_FALSE(d.queue_id.empty());
  const auto files = files_in(root_ / "new");
  ASSERT_EQ(files.size(), 1u);
  EXPECT_TRUE(files_in(root_ / "tmp").empty());
  EXPECT_TRUE(fs::is_directory(root_ / "cur"));
  EXPECT_NE(files[0].filename().string().find(d.queue_id), std::string::npos);
  EXPECT_EQ(read_all(files[0]), delivery_headers(addr("a", "example.test"), rcpts) + content);
  EXPECT_EQ(fs::status(files[0]).permissions() & fs::perms::all, fs::perms::owner_read | fs::perms::owner_write);
}

int fsync_fails_calls = 0;
bool fsync_fails(const fs::path&) {
  ++fsync_fails_calls;
  errno = EIO;
  return false;
}

// A message spilled to a file is read in chunks; a CRLF cut by a chunk
// boundary is one LF in the file, and every byte arrives.
TEST_F(MaildirDelivery, SpilledMessageByteExact) {
  auto memory = std::make_shared<message_memory>(0);  // no memory: the store is a file
  message_store m(memory, {0, base_});
  std::string body = "Subject: big\r\n\r\n";
  while (body.size() < message_store::reader::default_chunk - 1) body += "0123456789abcdef\r\n";
  body.resize(message_store::reader::default_chunk - 1);
  body += "\r\nnext line\r\n";  // the CR ends the first chunk, its LF starts the second
  for (int i = 0; i < 20000; ++i) body += "line " + std::to_string(i) + "\r\n";
  ASSERT_TRUE(m.append(body));
  ASSERT_TRUE(m.seal());
  ASSERT_TRUE(m.spilled());
  const auto d = deliver(root_, "mx.test", addr("a", "x.test"), {addr("b", "x.test")}, "Received: x\r\n", m);
  ASSERT_TRUE(d.delivered()) << d.error;
  const auto files = files_in(root_ / "new");
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(read_all(files[0]), delivery_headers(addr("a", "x.test"), {addr("b", "x.test")}) + to_lf("Received: x\r\n", body));
}

// Item 5 of issue 7: once the message is in new/, a failed fsync of new/ is
// no reason for a 451 (the client's retry would deliver it twice).
TEST_F(MaildirDelivery, FailedDirectorySyncAfterRenameIsStillDelivered) {
  fsync_fails_calls = 0;
  const auto d = deliver(root_, "mx.test", addr("a", "example.test"), {addr("b", "example.test")}, "", *stored("x\n"), fsync_fails);
  EXPECT_EQ(fsync_fails_calls, 1);
  EXPECT_TRUE(d.delivered()) << d.error;
  EXPECT_FALSE(d.queue_id.empty());
  EXPECT_EQ(d.warning, "fsync " + (root_ / "new").string() + ": Input/output error");
  EXPECT_EQ(files_in(root_ / "new").size(), 1u);
  EXPECT_TRUE(files_in(root_ / "tmp").empty());
}

// Failures before the rename: not delivered, nothing left behind.
TEST_F(MaildirDelivery, NoMaildirIsAnErrorAndLeavesNothing) {
  { std::ofstream(base_ / "file") << "in the way\n"; }
  const auto d = deliver(base_ / "file", "mx.test", addr("a", "x.test"), {addr("b", "x.test")}, "", *stored("x\n"));
  EXPECT_FALSE(d.delivered());
  EXPECT_EQ(d.error.rfind("open " + (base_ / "file" / "tmp").string() + "/", 0), 0u) << d.error;
  EXPECT_EQ(read_all(base_ / "file"), "in the way\n");
}

TEST_F(MaildirDelivery, UnwritableNewIsAnErrorAndLeavesNothing) {
  if (::geteuid() == 0) {
    // root renames into a read-only directory anyway: make new/ a file instead.
    fs::create_directories(root_ / "tmp");
    std::ofstream(root_ / "new") << "not a dir\n";
  } else {
    fs::create_directories(root_ / "new");
    fs::permissions(root_ / "new", fs::perms::owner_read | fs::perms::owner_exec);
  }
  const auto d = deliver(root_, "mx.test", addr("a", "x.test"), {addr("b", "x.test")}, "", *stored("x\n"));
  EXPECT_FALSE(d.delivered());
  EXPECT_EQ(d.error.rfind("rename into new/: ", 0), 0u) << d.error;
  EXPECT_TRUE(files_in(root_ / "tmp").empty());
}

TEST_F(MaildirDelivery, NamesAreUnique) {
  for (int i = 0; i < 20; ++i) {
    const auto d = deliver(root_, "mx.test", addr("a", "x.test"), {addr("b", "x.test")}, "", *stored("x\n"));
    ASSERT_TRUE(d.delivered()) << d.error;
  }
  EXPECT_EQ(files_in(root_ / "new").size(), 20u);
}

}  // namespace
}  // namespace portcullis::maildir
