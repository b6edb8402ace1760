// Writing one message into a Maildir (https://cr.yp.to/proto/maildir.html):
// the file steps of the `maildir:PATH` upstream, apart from its coroutine so
// that they can be tested on a real directory, failures included.
//
// One Maildir is one mailbox: a transaction is one file, however many
// recipients it has, with the envelope in its headers as Postfix's local(8)
// writes them: Return-Path, then one Delivered-To per recipient.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "smtp/address.hpp"
#include "store/message_store.hpp"

namespace portcullis::maildir {

struct delivery {
  std::string queue_id;  // the file's unique part; set once the message is in new/
  std::string error;     // not delivered, and nothing left behind
  std::string warning;   // delivered, but a step after the rename failed (the fsync of new/)
  bool delivered() const { return error.empty(); }
};

// fsync(2) of a directory, so that the names in it are on disk. A parameter
// of deliver() so that a test can make it fail.
using directory_sync = bool (*)(const std::filesystem::path& dir);
bool sync_directory(const std::filesystem::path& dir);

// "Return-Path: <sender>\n" then "Delivered-To: rcpt\n" for each recipient,
// in envelope order, each address once.
std::string delivery_headers(const smtp::address& sender, const std::vector<smtp::address>& recipients);

// The header (our Received:) and the message, CRLF to LF: Maildir files use
// the local line ending, as every delivery agent writes them.
std::string to_lf(std::string_view header, std::string_view message);

// The same for a message that comes in chunks: a CR that ends one chunk waits
// to see whether the next begins with LF.
class lf_converter {
 public:
  void feed(std::string_view in, std::string& out);
  void finish(std::string& out);  // a CR left waiting at the very end is kept

 private:
  bool pending_cr_ = false;
};

// Writes delivery_headers, `header` and `message` (both CRLF, written with LF
// line endings, read in chunks from the store) to tmp/, fsyncs it,
// renames it into new/ and fsyncs new/. Once the rename is done the message
// is delivered whatever follows: a failed fsync of new/ is a warning, not an
// error, or the client would retry a message that is already there.
delivery deliver(const std::filesystem::path& root, const std::string& hostname, const smtp::address& sender,
                 const std::vector<smtp::address>& recipients, std::string_view header,
                 const message_store& message, directory_sync sync = sync_directory);

}  // namespace portcullis::maildir
