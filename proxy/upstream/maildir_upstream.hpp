// Local delivery into a Maildir (the `maildir:PATH` upstream): for the quick
// start and for hosts with no mail server. One Maildir is one mailbox, so a
// transaction is one file whatever its recipients (maildir_delivery.hpp):
// Return-Path and one Delivered-To per recipient, written to tmp/, synced,
// then renamed into new/. The 250 is given once it is in new/.
#pragma once

#include "upstream/upstream.hpp"

namespace portcullis {

class maildir_upstream final : public upstream {
 public:
  maildir_upstream(const config& cfg, const session_log& log, asio::any_io_executor io, asio::thread_pool& blocking);

  awaitable<smtp::reply> mail(const smtp::address& sender, const mail_options& options) override;
  awaitable<smtp::reply> rcpt(const smtp::address& recipient) override;
  awaitable<smtp::reply> data(std::string_view header, const message_store& message) override;
  awaitable<void> reset() override;
  awaitable<void> quit() override { co_return; }
  bool connected() const override { return true; }

 private:
  std::filesystem::path root_;
  std::string hostname_;
  const session_log& log_;
  asio::thread_pool& blocking_;  // file I/O and fsync never run on an I/O thread
  smtp::address sender_;
  std::vector<smtp::address> recipients_;
};

}  // namespace portcullis
