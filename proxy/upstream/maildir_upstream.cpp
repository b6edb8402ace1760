#include "upstream/maildir_upstream.hpp"

#include "log.hpp"
#include "upstream/maildir_delivery.hpp"

namespace portcullis {

maildir_upstream::maildir_upstream(const config& cfg, const session_log& log, asio::any_io_executor,
                                   asio::thread_pool& blocking)
    : root_(cfg.upstream.maildir), hostname_(cfg.server.hostname), log_(log), blocking_(blocking) {}

awaitable<smtp::reply> maildir_upstream::mail(const smtp::address& sender, const mail_options&) {
  sender_ = sender;
  recipients_.clear();
  co_return smtp::reply{250, "2.1.0", "Ok"};
}

awaitable<smtp::reply> maildir_upstream::rcpt(const smtp::address& recipient) {
  recipients_.push_back(recipient);
  co_return smtp::reply{250, "2.1.5", "Ok"};
}

awaitable<smtp::reply> maildir_upstream::data(std::string_view header, const message_store& message) {
  // The session keeps `message` alive until this returns.
  auto write_file = [&]() -> awaitable<maildir::delivery> {
    co_return maildir::deliver(root_, hostname_, sender_, recipients_, header, message);
  };
  auto result = co_await asio::co_spawn(blocking_, std::move(write_file), asio::use_awaitable);
  recipients_.clear();
  if (!result.delivered()) {
    log_.error("maildir: {}", result.error);
    co_return smtp::reply{451, "4.3.0", "Local delivery failed, try again later"};
  }
  // In new/ is delivered: a 451 now would make the client send it again.
  if (!result.warning.empty()) log_.error("maildir: {} (the message {} is delivered)", result.warning, result.queue_id);
  co_return smtp::reply{250, "2.0.0", "Ok: queued as " + result.queue_id};
}

awaitable<void> maildir_upstream::reset() {
  recipients_.clear();
  co_return;
}

}  // namespace portcullis
