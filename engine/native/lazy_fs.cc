// Cairn's lazy-restore file system: a RocksDB FileSystemWrapper that asks Rust for an SST file
// before RocksDB opens, links or sizes it. See engine/src/backend/rocks/lazy.rs for the why.
//
// Compiled by engine/build.rs against the headers of the RocksDB that rust-librocksdb-sys
// builds (DEP_ROCKSDB_INCLUDE), with that build's defines, -std and -fno-rtti.

#include <cstdint>
#include <memory>
#include <string>

#include "rocksdb/env.h"
#include "rocksdb/file_system.h"

using ROCKSDB_NAMESPACE::Env;
using ROCKSDB_NAMESPACE::FileOptions;
using ROCKSDB_NAMESPACE::FileSystem;
using ROCKSDB_NAMESPACE::FileSystemWrapper;
using ROCKSDB_NAMESPACE::FSRandomAccessFile;
using ROCKSDB_NAMESPACE::FSRandomRWFile;
using ROCKSDB_NAMESPACE::FSSequentialFile;
using ROCKSDB_NAMESPACE::IODebugContext;
using ROCKSDB_NAMESPACE::IOOptions;
using ROCKSDB_NAMESPACE::IOStatus;

// The C API's handle, as RocksDB's db/c.cc defines it: `rocksdb_env_destroy` deletes `rep`
// (when not the default Env) and then the handle itself.
struct rocksdb_env_t {
  Env* rep;
  bool is_default;
};

extern "C" {
// What a callback is asked (`op`):
//   0 NEED   RocksDB is about to read `path`: fetch it (verified) if it is pending, and wait.
//   1 QUERY  is `path` pending? If so, store its recorded size in `*size`.
//   2 FORGET RocksDB deletes `path`: a pending copy is no longer wanted.
// Returns 0 when `path` is not (or no longer) pending: the local file system answers;
// 1 when it is pending (QUERY, FORGET); -1 on a failed fetch, with a message in `err`.
typedef int (*cairn_lazy_callback)(void* ctx, const char* path, size_t path_len, int op,
                                   uint64_t* size, char* err, size_t err_cap);
// Drops the Rust side's reference when the file system is destroyed.
typedef void (*cairn_lazy_release)(void* ctx);
}

namespace {

constexpr int kNeed = 0;
constexpr int kQuery = 1;
constexpr int kForget = 2;

class LazyFs : public FileSystemWrapper {
 public:
  LazyFs(const std::shared_ptr<FileSystem>& base, cairn_lazy_callback cb,
         cairn_lazy_release release, void* ctx)
      : FileSystemWrapper(base), cb_(cb), release_(release), ctx_(ctx) {}
  ~LazyFs() override { release_(ctx_); }

  static const char* kClassName() { return "CairnLazyFs"; }
  const char* Name() const override { return kClassName(); }

  IOStatus NewRandomAccessFile(const std::string& f, const FileOptions& o,
                               std::unique_ptr<FSRandomAccessFile>* r,
                               IODebugContext* dbg) override {
    IOStatus s = Need(f);
    return s.ok() ? target()->NewRandomAccessFile(f, o, r, dbg) : s;
  }
  IOStatus NewSequentialFile(const std::string& f, const FileOptions& o,
                             std::unique_ptr<FSSequentialFile>* r,
                             IODebugContext* dbg) override {
    IOStatus s = Need(f);
    return s.ok() ? target()->NewSequentialFile(f, o, r, dbg) : s;
  }
  IOStatus NewRandomRWFile(const std::string& f, const FileOptions& o,
                           std::unique_ptr<FSRandomRWFile>* r,
                           IODebugContext* dbg) override {
    IOStatus s = Need(f);
    return s.ok() ? target()->NewRandomRWFile(f, o, r, dbg) : s;
  }
  IOStatus LinkFile(const std::string& src, const std::string& t, const IOOptions& o,
                    IODebugContext* dbg) override {
    IOStatus s = Need(src);
    return s.ok() ? target()->LinkFile(src, t, o, dbg) : s;
  }
  IOStatus NumFileLinks(const std::string& f, const IOOptions& o, uint64_t* count,
                        IODebugContext* dbg) override {
    IOStatus s = Need(f);
    return s.ok() ? target()->NumFileLinks(f, o, count, dbg) : s;
  }
  IOStatus GetFileModificationTime(const std::string& f, const IOOptions& o,
                                   uint64_t* mtime, IODebugContext* dbg) override {
    IOStatus s = Need(f);
    return s.ok() ? target()->GetFileModificationTime(f, o, mtime, dbg) : s;
  }
  IOStatus FileExists(const std::string& f, const IOOptions& o,
                      IODebugContext* dbg) override {
    uint64_t size = 0;
    if (Ask(f, kQuery, &size) == 1) return IOStatus::OK();
    return target()->FileExists(f, o, dbg);
  }
  IOStatus GetFileSize(const std::string& f, const IOOptions& o, uint64_t* size,
                       IODebugContext* dbg) override {
    if (Ask(f, kQuery, size) == 1) return IOStatus::OK();
    return target()->GetFileSize(f, o, size, dbg);
  }
  IOStatus DeleteFile(const std::string& f, const IOOptions& o,
                      IODebugContext* dbg) override {
    uint64_t size = 0;
    // Never fetched: nothing local to delete.
    if (Ask(f, kForget, &size) == 1) return IOStatus::OK();
    return target()->DeleteFile(f, o, dbg);
  }

 private:
  int Ask(const std::string& f, int op, uint64_t* size) {
    char err[1] = {0};
    return cb_(ctx_, f.data(), f.size(), op, size, err, 0);
  }
  IOStatus Need(const std::string& f) {
    char err[1024] = {0};
    uint64_t size = 0;
    if (cb_(ctx_, f.data(), f.size(), kNeed, &size, err, sizeof(err)) < 0) {
      err[sizeof(err) - 1] = 0;
      // Corruption, not IOError: RocksDB's error handler makes a failed background open
      // (open_files_async) or compaction with it an unrecoverable error that stops the
      // database. An IOError there is a soft error whose automatic recovery waits for a
      // flush that never comes, and DB close then waits for that recovery forever.
      return IOStatus::Corruption("cairn lazy restore: fetching " + f + " failed", err);
    }
    return IOStatus::OK();
  }

  cairn_lazy_callback cb_;
  cairn_lazy_release release_;
  void* ctx_;
};

}  // namespace

extern "C" rocksdb_env_t* cairn_lazy_env_create(cairn_lazy_callback cb,
                                                cairn_lazy_release release, void* ctx) {
  try {
    auto fs = std::make_shared<LazyFs>(FileSystem::Default(), cb, release, ctx);
    std::unique_ptr<Env> env = ROCKSDB_NAMESPACE::NewCompositeEnv(fs);
    return new rocksdb_env_t{env.release(), false};
  } catch (...) {
    release(ctx);
    return nullptr;
  }
}
