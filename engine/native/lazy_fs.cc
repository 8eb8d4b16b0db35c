// Cairn's lazy-restore file system: a RocksDB FileSystemWrapper that asks Rust for an SST file
// before RocksDB opens, links or sizes it, and serves random reads of a file not yet local
// through Rust (a range of the stored object). See engine/src/backend/rocks/lazy.rs for the why.
//
// Compiled by engine/build.rs against the headers of the RocksDB that rust-librocksdb-sys
// builds (DEP_ROCKSDB_INCLUDE), with that build's defines, -std and -fno-rtti.

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

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
// RocksDB opens `path` for random reads: when it is pending, moves it to the front of the fetch
// queue without waiting, stores its recorded size in `*size` and a reader handle in `*file`,
// and returns 1; 0 when it is not pending (the local file system opens it); -1 when its fetch
// failed, with a message in `err`.
typedef int (*cairn_lazy_open)(void* ctx, const char* path, size_t path_len, uint64_t* size,
                               void** file, char* err, size_t err_cap);
// Reads up to `n` bytes at `offset` of an opened pending file into `buf` (the local copy once
// it is there, else a range of the stored object); stores the count in `*read` (fewer than `n`
// only at the end of the file) and returns 0, or -1 with a message in `err`.
typedef int (*cairn_lazy_read)(void* file, uint64_t offset, char* buf, size_t n, size_t* read,
                               char* err, size_t err_cap);
// Drops a reader handle (its file is closed).
typedef void (*cairn_lazy_file_release)(void* file);
}

namespace {

constexpr int kNeed = 0;
constexpr int kQuery = 1;
constexpr int kForget = 2;

// The message a failed fetch or range read carries (`FETCH_FAILED` in lazy.rs recognises it).
// Corruption, not IOError: RocksDB's error handler makes a failed background open
// (open_files_async) or compaction with it an unrecoverable error that stops the database. An
// IOError there is a soft error whose automatic recovery waits for a flush that never comes,
// and DB close then waits for that recovery forever.
IOStatus Failed(const std::string& f, char* err, size_t cap) {
  err[cap - 1] = 0;
  return IOStatus::Corruption("cairn lazy restore: fetching " + f + " failed", err);
}

// A pending SST opened for random reads: every read asks Rust, which reads the local copy once
// it is fetched and verified, else a range of the stored object. Table readers live as long as
// the table cache keeps them, so the switch to the local copy happens per read.
// Prefetch (NotSupported: RocksDB then uses its own prefetch buffer), MultiRead and ReadAsync
// keep FSRandomAccessFile's defaults, which call Read; GetUniqueId keeps its default (0: no id;
// block-based tables derive their cache keys from the DB session id and file number anyway).
class LazyRandomAccessFile : public FSRandomAccessFile {
 public:
  LazyRandomAccessFile(std::string path, uint64_t size, cairn_lazy_read read,
                       cairn_lazy_file_release release, void* file)
      : path_(std::move(path)), size_(size), read_(read), release_(release), file_(file) {}
  ~LazyRandomAccessFile() override { release_(file_); }

  IOStatus Read(uint64_t offset, size_t n, const IOOptions& /*o*/,
                ROCKSDB_NAMESPACE::Slice* result, char* scratch,
                IODebugContext* /*dbg*/) const override {
    if (scratch == nullptr && n > 0) {
      return IOStatus::InvalidArgument("cairn lazy restore: a read without a buffer");
    }
    char err[1024] = {0};
    size_t got = 0;
    if (read_(file_, offset, scratch, n, &got, err, sizeof(err)) < 0 || got > n) {
      *result = ROCKSDB_NAMESPACE::Slice();
      return Failed(path_, err, sizeof(err));
    }
    *result = ROCKSDB_NAMESPACE::Slice(scratch, got);
    return IOStatus::OK();
  }
  IOStatus GetFileSize(uint64_t* result) override {
    *result = size_;
    return IOStatus::OK();
  }

 private:
  std::string path_;
  uint64_t size_;
  cairn_lazy_read read_;
  cairn_lazy_file_release release_;
  void* file_;
};

class LazyFs : public FileSystemWrapper {
 public:
  LazyFs(const std::shared_ptr<FileSystem>& base, cairn_lazy_callback cb,
         cairn_lazy_release release, cairn_lazy_open open, cairn_lazy_read read,
         cairn_lazy_file_release file_release, void* ctx)
      : FileSystemWrapper(base),
        cb_(cb),
        release_(release),
        open_(open),
        read_(read),
        file_release_(file_release),
        ctx_(ctx) {}
  ~LazyFs() override { release_(ctx_); }

  static const char* kClassName() { return "CairnLazyFs"; }
  const char* Name() const override { return kClassName(); }

  IOStatus NewRandomAccessFile(const std::string& f, const FileOptions& o,
                               std::unique_ptr<FSRandomAccessFile>* r,
                               IODebugContext* dbg) override {
    // A pending file is not waited for: its reads are served as they come (see
    // LazyRandomAccessFile), while the fetch queue takes it first.
    char err[1024] = {0};
    uint64_t size = 0;
    void* file = nullptr;
    int pending = open_(ctx_, f.data(), f.size(), &size, &file, err, sizeof(err));
    if (pending < 0) return Failed(f, err, sizeof(err));
    if (pending == 1) {
      try {
        r->reset(new LazyRandomAccessFile(f, size, read_, file_release_, file));
      } catch (...) {
        file_release_(file);
        return IOStatus::IOError("cairn lazy restore: out of memory opening " + f);
      }
      return IOStatus::OK();
    }
    return target()->NewRandomAccessFile(f, o, r, dbg);
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
      return Failed(f, err, sizeof(err));
    }
    return IOStatus::OK();
  }

  cairn_lazy_callback cb_;
  cairn_lazy_release release_;
  cairn_lazy_open open_;
  cairn_lazy_read read_;
  cairn_lazy_file_release file_release_;
  void* ctx_;
};

}  // namespace

extern "C" rocksdb_env_t* cairn_lazy_env_create(cairn_lazy_callback cb,
                                                cairn_lazy_release release,
                                                cairn_lazy_open open, cairn_lazy_read read,
                                                cairn_lazy_file_release file_release,
                                                void* ctx) {
  try {
    auto fs = std::make_shared<LazyFs>(FileSystem::Default(), cb, release, open, read,
                                       file_release, ctx);
    std::unique_ptr<Env> env = ROCKSDB_NAMESPACE::NewCompositeEnv(fs);
    return new rocksdb_env_t{env.release(), false};
  } catch (...) {
    release(ctx);
    return nullptr;
  }
}
