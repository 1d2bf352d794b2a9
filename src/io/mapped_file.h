// A file mapped read-only into memory: the kernel reads a page from disk only when it is first
// touched, so a reader that needs a few byte ranges of a large file reads only their pages.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace moe {

// The mapping lives as long as the object (share it through a shared_ptr). Files are expected
// not to change while mapped: checkpoints are committed by rename and never edited in place (a
// file truncated by another process under a live mapping would fault on access, SIGBUS).
class MappedFile {
 public:
  // Refuses a path that is not a regular file before opening it (a FIFO would block); errors
  // read "<path>: cannot open <what> (...)", "cannot open <what> <path>", "cannot stat <what>
  // <path>: ..." or "cannot map <what> <path>: ...".
  MappedFile(const std::filesystem::path& path, const std::string& what);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const unsigned char* data() const { return data_; }  // nullptr for an empty file
  uint64_t size() const { return size_; }
  // Hints that the whole file will be read once, front to back (more read-ahead).
  void advise_sequential() const;
  // Drops this process's mapping of the whole pages inside [begin, end) after they were read:
  // the data stays in the page cache, but no longer counts in this process's resident set, so
  // a pass over a file larger than memory does not crowd out the rest.
  void release(uint64_t begin, uint64_t end) const;

 private:
  unsigned char* data_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace moe
